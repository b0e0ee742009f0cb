//! The launchd side of `service`: finishing an install (`bootstrap`, or `bootout` and `bootstrap`
//! after a change, `kickstart` when loaded already), uninstalling, and asking for the status,
//! all through `launchctl` in the `gui/<uid>` domain.

use std::ffi::OsStr;
use std::process::{Command as Process, Stdio};

use super::files::{Existing, create_dirs, describe_file, refuse_edited, remove_file, state_of};
use super::home::{Home, LABEL};
use super::step::{run_step, shell_quote};
use crate::cli::InstallArgs;
use crate::exit;

/// `gui/<uid>`: the per-user launchd domain of a logged-in user.
fn gui_domain() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

fn launchctl(args: &[&OsStr], hint: &str) -> Result<(), u8> {
    run_step("launchctl", args, hint)
}

/// Whether launchd has the agent loaded (`launchctl print` succeeds), asked quietly; the error
/// when `launchctl` cannot be run at all.
fn launchctl_loaded(target: &str) -> std::io::Result<bool> {
    Process::new("launchctl")
        .args(["print", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
}

/// [`launchctl_loaded`] for a step that cannot go on without the answer.
fn launchctl_probe(target: &str) -> Result<bool, u8> {
    launchctl_loaded(target).map_err(|e| {
        eprintln!("claude-tokend: cannot run launchctl: {e} (is this macOS?)");
        exit::FAILURE
    })
}

pub(super) fn finish_install(home: &Home, args: &InstallArgs, changed: bool) -> Result<(), u8> {
    let logs = home.log_path();
    // launchd creates the log file but not its directory.
    if let Some(dir) = logs.parent()
        && let Err(e) = create_dirs(dir)
    {
        eprintln!("claude-tokend: cannot create {}: {e}", dir.display());
        return Err(exit::FAILURE);
    }
    let domain = gui_domain();
    let target = format!("{domain}/{LABEL}");
    let agent = home.agent_path();
    let hint = format!(
        "the agent file {} is in place, and launchd loads it at your next login (over ssh with \
         nobody logged in at the screen there is no gui domain to load it into now)",
        agent.display()
    );
    if args.now {
        let agent_arg = agent.as_os_str();
        if launchctl_probe(&target)? {
            if changed {
                // launchd keeps the definition it loaded; only a bootout and a bootstrap read the new one.
                launchctl(&[OsStr::new("bootout"), OsStr::new(&target)], &hint)?;
                launchctl(
                    &[OsStr::new("bootstrap"), OsStr::new(&domain), agent_arg],
                    &hint,
                )?;
            } else {
                // Loaded already; start it if it is not running (no -k: a running one is left alone).
                launchctl(&[OsStr::new("kickstart"), OsStr::new(&target)], &hint)?;
            }
        } else {
            launchctl(
                &[OsStr::new("bootstrap"), OsStr::new(&domain), agent_arg],
                &hint,
            )?;
        }
        println!("claude-tokend is loaded and started; it starts again at every login.");
    } else {
        println!("To start it now (it starts by itself at every login from now on):");
        println!(
            "  launchctl bootstrap {domain} {}",
            shell_quote(&agent.to_string_lossy())
        );
        if changed {
            println!(
                "(Already loaded? `launchctl bootout {target}` first, so launchd reads the new file.)"
            );
        }
    }
    println!("Status: claude-tokend service status");
    println!("Logs:   tail -f {}", shell_quote(&logs.to_string_lossy()));
    Ok(())
}

pub(super) fn uninstall(home: &Home, force: bool) -> Result<(), u8> {
    let agent = home.agent_path();
    // A hand edit is no more ours to remove than to replace (before anything is stopped).
    if state_of(&agent)? == Existing::Edited && !force {
        return Err(refuse_edited(&[agent.as_path()], true, false));
    }
    let target = format!("{}/{LABEL}", gui_domain());
    let loaded = match launchctl_loaded(&target) {
        Ok(loaded) => loaded,
        // Nobody can be asked to stop it, here; the file is still ours to take back, and
        // leaving it would load the agent again at the next login (as systemd's uninstall does).
        Err(e) if agent.exists() => {
            eprintln!(
                "claude-tokend: warning: could not ask launchd to stop the agent (cannot run \
                 launchctl: {e}); removing its file anyway. An agent already loaded runs until \
                 you log out, or until `launchctl bootout {target}`."
            );
            remove_file(&agent)?;
            println!("claude-tokend's agent file is removed; launchd was not asked to stop it.");
            return Ok(());
        }
        Err(_) => false,
    };
    if !agent.exists() && !loaded {
        println!("Nothing to remove: {} does not exist.", agent.display());
        return Ok(());
    }
    if loaded {
        let hint = format!("nothing was removed; the agent file is {}", agent.display());
        launchctl(&[OsStr::new("bootout"), OsStr::new(&target)], &hint)?;
    }
    remove_file(&agent)?;
    println!(
        "claude-tokend is stopped and uninstalled (its log, {}, is kept).",
        home.log_path().display()
    );
    Ok(())
}

pub(super) fn status(home: &Home) -> Result<(), u8> {
    let agent = home.agent_path();
    let Some(state) = describe_file(&agent)? else {
        println!("Agent file: {} (not installed)", agent.display());
        println!("Install:    claude-tokend service install --now");
        return Err(exit::FAILURE);
    };
    println!("Agent file: {} ({state})", agent.display());
    let target = format!("{}/{LABEL}", gui_domain());
    println!("Running `launchctl print {target}`");
    let result = match Process::new("launchctl").args(["print", &target]).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            eprintln!("claude-tokend: the agent is not loaded ({s} from launchctl print)");
            Err(exit::FAILURE)
        }
        // Whether it runs is unknown, which is not "not loaded".
        Err(e) => {
            eprintln!(
                "claude-tokend: could not ask launchd whether the agent is loaded: cannot run \
                 launchctl: {e} (it comes with macOS, in /bin)"
            );
            Err(super::UNREACHABLE)
        }
    };
    println!(
        "Logs:       tail -f {}",
        shell_quote(&home.log_path().to_string_lossy())
    );
    result
}
