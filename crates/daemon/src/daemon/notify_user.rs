//! Telling a person that a login needs them: the `--notify-cmd` command (run with `sh -c`, the
//! event in `CLAUDE_TOKEND_*` variables, never a token) and `--notify desktop` (`notify-send`
//! on Linux, `osascript` on macOS, when present). Each run is a child process in its own process
//! group, watched by a short-lived thread that enforces the 30 s timeout and logs a failure once
//! per login and event: the loop never waits for it, and stopping the daemon does not kill it.
//! Which events happen when is decided per login in `login_state`; this module only delivers.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a notification command may run before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The events a person is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserEvent {
    LoginNeeded,
    LoginExpiring,
    RefreshFailing,
    Recovered,
}

impl UserEvent {
    pub fn name(self) -> &'static str {
        match self {
            UserEvent::LoginNeeded => "login-needed",
            UserEvent::LoginExpiring => "login-expiring",
            UserEvent::RefreshFailing => "refresh-failing",
            UserEvent::Recovered => "recovered",
        }
    }
}

/// One thing to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub event: UserEvent,
    /// `CLAUDE_TOKEND_LOGIN`: the credentials path as located, or `keychain:<service>`.
    pub login: String,
    /// One line for a person; never a token.
    pub message: String,
    /// `CLAUDE_TOKEND_DEADLINE` (epoch ms), when the event has one.
    pub deadline: Option<i64>,
}

/// Where notices go.
/// The names the notification settings were given by, for messages.
#[derive(Clone, Debug)]
pub struct Named {
    /// `--notify-cmd`, or `CLAUDE_TOKEND_NOTIFY_CMD` when the variable set it.
    pub command: String,
    /// `--notify desktop`, or `CLAUDE_TOKEND_NOTIFY=desktop`.
    pub desktop: String,
}

impl Default for Named {
    fn default() -> Self {
        Named {
            command: "--notify-cmd".into(),
            desktop: "--notify desktop".into(),
        }
    }
}

pub struct UserNotifier {
    command: Option<String>,
    desktop: bool,
    /// How the user set the command and desktop notices (`--notify-cmd` or
    /// `CLAUDE_TOKEND_NOTIFY_CMD`; `--notify desktop` or `CLAUDE_TOKEND_NOTIFY=desktop`), for
    /// messages that name the setting the way it was given.
    named: Named,
    /// (login, event) pairs whose failure was already logged.
    failed: Arc<Mutex<HashSet<(String, UserEvent)>>>,
}

impl UserNotifier {
    /// With `desktop`, warns at once when this system's notification program is not on PATH:
    /// the user hears it when starting the daemon, not on the day a notice goes nowhere.
    pub fn new(command: Option<String>, desktop: bool, named: Named) -> Self {
        if desktop && on_path(desktop_program()).is_none() {
            tracing::warn!(
                "{}: {} is not on PATH ({}), so desktop notifications cannot be \
                 shown; install it (Debian/Ubuntu: libnotify-bin), or use --notify-cmd",
                named.desktop,
                desktop_program(),
                std::env::var("PATH").unwrap_or_default()
            );
        }
        UserNotifier {
            command: command.filter(|c| !c.trim().is_empty()),
            desktop,
            named,
            failed: Arc::default(),
        }
    }

    /// Starts every configured delivery of `notice` and returns at once.
    pub fn send(&self, notice: &Notice) {
        tracing::info!(
            event = notice.event.name(),
            "telling the user: {}",
            notice.message
        );
        if let Some(command) = &self.command {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(command);
            cmd.env("CLAUDE_TOKEND_EVENT", notice.event.name())
                .env("CLAUDE_TOKEND_LOGIN", &notice.login)
                .env("CLAUDE_TOKEND_MESSAGE", &notice.message);
            match notice.deadline.and_then(rfc3339) {
                Some(d) => cmd.env("CLAUDE_TOKEND_DEADLINE", d),
                None => cmd.env_remove("CLAUDE_TOKEND_DEADLINE"),
            };
            self.run(cmd, notice, &self.named.command);
        }
        if self.desktop {
            match desktop_command(notice) {
                Some(cmd) => self.run(cmd, notice, &self.named.desktop),
                None => self.failed_once(
                    notice,
                    &self.named.desktop,
                    format!("{} is not on PATH", desktop_program()),
                ),
            }
        }
    }

    /// Logs that a delivery failed, once per login and event (as a failed run is).
    fn failed_once(&self, notice: &Notice, what: &str, why: String) {
        let mut seen = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert((notice.login.clone(), notice.event)) {
            tracing::warn!(
                "{what} for {} ({}) failed: {why}",
                notice.event.name(),
                notice.login
            );
        }
    }

    fn run(&self, mut cmd: Command, notice: &Notice, what: &str) {
        let named = what.to_owned();
        // Its own process group: a timeout kills the command and whatever it started, and the
        // daemon's own signals (a Ctrl-C in a terminal) do not reach it.
        // No pipe of ours stays open in it: a command that outlives the daemon must not keep
        // whoever reads the daemon's output waiting. Its exit status is what is logged.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let key = (notice.login.clone(), notice.event);
        let failed = Arc::clone(&self.failed);
        let fail = move |why: String| {
            let mut seen = failed.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(key.clone()) {
                tracing::warn!("{named} for {} ({}) failed: {why}", key.1.name(), key.0);
            }
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot start it: {e}")),
        };
        let spawned = std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                let started = Instant::now();
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) if status.success() => return,
                        Ok(Some(status)) => return fail(format!("it exited with {status}")),
                        Ok(None) if started.elapsed() >= RUN_LIMIT => {
                            // SAFETY: kill(2) on the process group of a child not yet reaped.
                            unsafe {
                                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                            }
                            let _ = child.wait();
                            return fail(format!("it ran longer than {}s", RUN_LIMIT.as_secs()));
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                        Err(e) => return fail(format!("cannot wait for it: {e}")),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the {what} command: {e}");
        }
    }
}

/// `2026-12-02T12:00:00Z` for epoch milliseconds, to the second (rounded down: a deadline is
/// never reported later than it is).
fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_second(ms.div_euclid(1000))
        .ok()
        .map(|t| t.to_string())
}

/// The program `--notify desktop` runs on this system.
fn desktop_program() -> &'static str {
    if cfg!(target_os = "macos") {
        "osascript"
    } else {
        "notify-send"
    }
}

/// The desktop notification command for this system, when its program is installed.
fn desktop_command(notice: &Notice) -> Option<Command> {
    let title = format!("claude-tokend: {}", notice.event.name());
    on_path(desktop_program())?;
    if cfg!(target_os = "macos") {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut cmd = Command::new("osascript");
        cmd.arg("-e").arg(format!(
            "display notification \"{}\" with title \"{}\"",
            quote(&notice.message),
            quote(&title)
        ));
        Some(cmd)
    } else {
        let mut cmd = Command::new("notify-send");
        cmd.args(["--app-name", "claude-tokend", &title, &notice.message]);
        Some(cmd)
    }
}

fn on_path(program: &str) -> Option<()> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .any(|dir| dir.join(program).is_file())
        .then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(1_796_184_753_000).as_deref(),
            Some("2026-12-02T04:12:33Z")
        );
        assert_eq!(
            rfc3339(i64::MAX),
            None,
            "out of range: no deadline, no panic"
        );
    }

    #[test]
    fn event_names_are_the_contracts() {
        let names: Vec<_> = [
            UserEvent::LoginNeeded,
            UserEvent::LoginExpiring,
            UserEvent::RefreshFailing,
            UserEvent::Recovered,
        ]
        .iter()
        .map(|e| e.name())
        .collect();
        assert_eq!(
            names,
            [
                "login-needed",
                "login-expiring",
                "refresh-failing",
                "recovered"
            ]
        );
    }
}
