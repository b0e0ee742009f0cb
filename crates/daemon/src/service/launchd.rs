//! The launchd side of `service`: finishing an install (`bootstrap`, or `bootout` and `bootstrap`
//! after a change, `kickstart` when loaded already), uninstalling, and asking for the status,
//! all through `launchctl` in the `gui/<uid>` domain.

use std::ffi::OsStr;

use super::commit::{create_dirs, sweep_temps};
use super::files::{describe_file, refuse_unremovable, remove_all};
use super::found::{Found, Kind, Role};
use super::home::{Home, LABEL, parent};
use super::step::{self, Ran, by_hand, run_steps, shell_quote, shown, spoken, step_result};
use super::systemd::refuse_removing;
use super::way;
use crate::cli::InstallArgs;
use crate::{exit, interrupt};

/// `gui/<uid>`: the per-user launchd domain of a logged-in user.
fn gui_domain() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

/// Asks launchd whether the agent is loaded (`launchctl print` succeeds), quietly and bounded.
fn launchctl_loaded(target: &str) -> Ran {
    step::ask("launchctl", &[OsStr::new("print"), OsStr::new(target)])
}

/// Says that the question whether the agent is loaded got no answer in time, what was (not)
/// done, and what to run by hand; the exit code.
fn probe_hung(target: &str, limit: std::time::Duration, done: &str, rest: Vec<String>) -> u8 {
    tell!(
        "claude-tokend: `launchctl print {target}` did not finish within {} and was stopped; \
         {done}. (The bootout below fails harmlessly when the agent is not loaded.)",
        spoken(limit)
    );
    by_hand(rest);
    exit::FAILURE
}

/// Says that the question whether the agent is loaded was interrupted by `signal`, what was
/// (not) done, and what to run by hand; the exit code (128 + the signal).
fn probe_interrupted(signal: libc::c_int, target: &str, done: &str, rest: Vec<String>) -> u8 {
    let shown = format!("launchctl print {target}");
    interrupt::tell(format_args!("{}", step::interrupted(signal, &shown, done)));
    by_hand(rest);
    interrupt::exit_code(signal)
}

pub(super) fn finish_install(home: &Home, args: &InstallArgs, changed: bool) -> Result<(), u8> {
    let logs = home.log_path();
    // launchd creates the log file but not its directory.
    if let Some(dir) = logs.parent()
        && let Err(e) = create_dirs(dir, &mut Vec::new())
    {
        tell!("claude-tokend: cannot create {}: {e}", dir.display());
        return Err(exit::FAILURE);
    }
    let domain = gui_domain();
    let target = format!("{domain}/{LABEL}");
    let agent = home.agent_path();
    let done = format!(
        "the agent file {} is in place, and launchd loads it at your next login",
        agent.display()
    );
    let why = "over ssh with nobody logged in at the screen there is no gui domain to load it \
               into now";
    if args.now {
        let bootout = vec![OsStr::new("bootout"), OsStr::new(&target)];
        let bootstrap = vec![
            OsStr::new("bootstrap"),
            OsStr::new(&domain),
            agent.as_os_str(),
        ];
        let loaded = match launchctl_loaded(&target) {
            Ran::Success => true,
            Ran::Failed(..) => false,
            Ran::NotRun(e) => {
                tell!("claude-tokend: cannot run launchctl: {e} (is this macOS?)");
                return Err(exit::FAILURE);
            }
            Ran::TimedOut(limit) => {
                let rest = [&bootout, &bootstrap].map(|a| shown("launchctl", a));
                return Err(probe_hung(
                    &target,
                    limit,
                    &format!("{done}; {why}"),
                    rest.into(),
                ));
            }
            Ran::Interrupted(signal) => {
                let rest = [&bootout, &bootstrap].map(|a| shown("launchctl", a));
                return Err(probe_interrupted(signal, &target, &done, rest.into()));
            }
        };
        let steps = match (loaded, changed) {
            // launchd keeps the definition it loaded; only a bootout and a bootstrap read the new one.
            (true, true) => vec![bootout, bootstrap],
            // Loaded already; start it if it is not running (no -k: a running one is left alone).
            (true, false) => vec![vec![OsStr::new("kickstart"), OsStr::new(&target)]],
            (false, _) => vec![bootstrap],
        };
        run_steps("launchctl", &steps, &done, why)?;
        say!("claude-tokend is loaded and started; it starts again at every login.");
    } else {
        say!("To start it now (it starts by itself at every login from now on):");
        say!(
            "  launchctl bootstrap {domain} {}",
            shell_quote(&agent.to_string_lossy())
        );
        if changed {
            say!(
                "(Already loaded? `launchctl bootout {target}` first, so launchd reads the new file.)"
            );
        }
    }
    say!("Status: claude-tokend service status");
    say!("Logs:   tail -f {}", shell_quote(&logs.to_string_lossy()));
    Ok(())
}

/// What [`finish_install`] would run with `--now`, as the user would type it: for a command
/// stopped before (the bootout fails harmlessly when the agent is not loaded). Without `--now`
/// nothing: launchd loads the agent at the next login.
pub(super) fn steps_left(home: &Home, args: &InstallArgs, changed: bool) -> Vec<String> {
    if !args.now {
        return Vec::new();
    }
    let domain = gui_domain();
    let target = format!("{domain}/{LABEL}");
    let agent = home.agent_path();
    let mut steps = Vec::new();
    if changed {
        steps.push(shown(
            "launchctl",
            &[OsStr::new("bootout"), OsStr::new(&target)],
        ));
    }
    steps.push(shown(
        "launchctl",
        &[
            OsStr::new("bootstrap"),
            OsStr::new(&domain),
            agent.as_os_str(),
        ],
    ));
    steps
}

pub(super) fn uninstall(home: &Home, force: bool) -> Result<(), u8> {
    let agent = Found::at(&home.agent_path(), Role::Agent)?;
    way::refuse_others_dirs(&[&parent(&agent.path)], &home.home, "removed")?;
    // A link to /dev/null is the user's way to keep the agent out: kept, always.
    let ours = agent.present() && agent.kind != Kind::Masked;
    // A hand edit is no more ours to remove than to replace (before anything is stopped).
    if ours {
        refuse_removing(&[&agent], force, false)?;
        refuse_unremovable(&[&agent])?;
    }
    sweep_temps(&[agent.path.as_path(), agent.file()]);
    let target = format!("{}/{LABEL}", gui_domain());
    let bootout = [OsStr::new("bootout"), OsStr::new(&target)];
    let rm = format!("rm -f {}", shell_quote(&agent.path.to_string_lossy()));
    let loaded = match launchctl_loaded(&target) {
        Ran::Success => true,
        Ran::Failed(..) => false,
        // Whether it runs is unknown: nothing is removed, and the rest is spelled out.
        Ran::TimedOut(limit) => {
            let rest = vec![shown("launchctl", &bootout), rm];
            return Err(probe_hung(&target, limit, "nothing was removed", rest));
        }
        Ran::Interrupted(signal) => {
            let rest = vec![shown("launchctl", &bootout), rm];
            return Err(probe_interrupted(
                signal,
                &target,
                "nothing was removed",
                rest,
            ));
        }
        // Nobody can be asked to stop it, here; the file is still ours to take back, and
        // leaving it would load the agent again at the next login (as systemd's uninstall does).
        Ran::NotRun(e) if ours => {
            tell!(
                "claude-tokend: warning: could not ask launchd to stop the agent (cannot run \
                 launchctl: {e}); removing its file anyway. An agent already loaded runs until \
                 you log out, or until `launchctl bootout {target}`."
            );
            remove_all(&[&agent], &[], &[])?;
            say!("claude-tokend's agent file is removed; launchd was not asked to stop it.");
            return Ok(());
        }
        Ran::NotRun(_) => false,
    };
    if !ours && !loaded {
        if agent.kind == Kind::Masked {
            say!("Nothing to remove: no file `service install` wrote is there.");
        } else {
            say!(
                "Nothing to remove: {} does not exist.",
                agent.path.display()
            );
        }
        if agent.kind == Kind::Masked {
            say!(
                "Kept: {}: {}",
                agent.path.display(),
                agent.describe_odd().unwrap_or_default()
            );
        }
        return Ok(());
    }
    if loaded {
        let ran = step::run("launchctl", &bootout);
        step_result("launchctl", &bootout, ran, "nothing was removed", "", &[rm])?;
    }
    if ours {
        let before = if loaded {
            vec![format!("{target} (booted out)")]
        } else {
            Vec::new()
        };
        remove_all(&[&agent], &before, &[])?;
    } else if agent.kind == Kind::Masked {
        say!(
            "Kept: {}: {}",
            agent.path.display(),
            agent.describe_odd().unwrap_or_default()
        );
    }
    say!(
        "claude-tokend is stopped and uninstalled (its log, {}, is kept).",
        home.log_path().display()
    );
    Ok(())
}

pub(super) fn status(home: &Home) -> Result<(), u8> {
    let agent = home.agent_path();
    let Some(state) = describe_file(&agent, Role::Agent)? else {
        say!("Agent file: {} (not installed)", agent.display());
        say!("Install:    claude-tokend service install --now");
        return Err(exit::FAILURE);
    };
    say!("Agent file: {} ({state})", agent.display());
    let target = format!("{}/{LABEL}", gui_domain());
    let print = [OsStr::new("print"), OsStr::new(&target)];
    let result = match step::run("launchctl", &print) {
        Ran::Success => Ok(()),
        Ran::Interrupted(signal) => {
            let shown = shown("launchctl", &print);
            interrupt::tell(format_args!(
                "{}",
                step::interrupted(signal, &shown, "nothing was changed")
            ));
            Err(interrupt::exit_code(signal))
        }
        Ran::Failed(s, _) => {
            tell!("claude-tokend: the agent is not loaded ({s} from launchctl print)");
            Err(exit::FAILURE)
        }
        // Whether it runs is unknown, which is not "not loaded".
        Ran::NotRun(e) => {
            tell!(
                "claude-tokend: could not ask launchd whether the agent is loaded: cannot run \
                 launchctl: {e} (it comes with macOS, in /bin)"
            );
            Err(super::UNREACHABLE)
        }
        Ran::TimedOut(limit) => {
            tell!(
                "claude-tokend: could not ask launchd whether the agent is loaded: \
                 `launchctl print {target}` did not finish within {} (stopped)",
                spoken(limit)
            );
            Err(super::UNREACHABLE)
        }
    };
    say!(
        "Logs:       tail -f {}",
        shell_quote(&home.log_path().to_string_lossy())
    );
    result
}
