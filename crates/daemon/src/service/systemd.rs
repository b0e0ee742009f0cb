//! The systemd side of `service`: finishing an install (`daemon-reload`, `enable --now`,
//! `try-restart` after a change), uninstalling (the unit, or the drop-in on a package's unit,
//! never the package's unit itself), and asking for the status, all through `systemctl --user`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::commit::{is_temp_of, sweep_temps};
use super::files::{
    Existing, describe_file, refuse_edited, refuse_unremovable, remove_all, remove_saying, state_of,
};
use super::found::{Found, Kind, Role};
use super::home::{Home, UNIT};
use super::step::{self, Ran, run_steps, shell_quote, spoken, step_result};
use super::way;
use crate::cli::InstallArgs;
use crate::{exit, interrupt};

/// After the files are written: `in_place` is the unit (or the drop-in on a package's unit).
pub(super) fn finish_install(in_place: &Path, args: &InstallArgs, restart: bool) -> Result<(), u8> {
    let done = format!("{} is in place", in_place.display());
    let why = "`systemctl --user` needs your user's systemd manager (over ssh or in a container \
               it may not be running: `loginctl enable-linger $USER`, then log in again)";
    if args.now {
        let mut steps = vec![
            user_args(&["daemon-reload"]),
            user_args(&["enable", "--now", UNIT]),
        ];
        if restart {
            // `enable --now` leaves a running service alone; it must restart to run the new files.
            steps.push(user_args(&["try-restart", UNIT]));
        }
        run_steps("systemctl", &steps, &done, why)?;
        say!("claude-tokend is enabled and started; it starts again at every login.");
    } else {
        say!("To start it now and at every login:");
        say!("  systemctl --user daemon-reload");
        say!("  systemctl --user enable --now {UNIT}");
        if restart {
            say!("(Already running? `systemctl --user restart {UNIT}` makes it use the new file.)");
        }
    }
    say!(
        "To keep it running while you are logged out (a server, ssh sessions): loginctl enable-linger $USER"
    );
    say!("Status: claude-tokend service status");
    say!("Logs:   journalctl --user -u claude-tokend -f");
    Ok(())
}

/// What [`finish_install`] would run, as the user would type it: for a command stopped before.
pub(super) fn steps_left(args: &InstallArgs, restart: bool) -> Vec<String> {
    let mut steps = vec![user_args(&["daemon-reload"])];
    if args.now {
        steps.push(user_args(&["enable", "--now", UNIT]));
        if restart {
            steps.push(user_args(&["try-restart", UNIT]));
        }
    }
    steps.iter().map(|a| step::shown("systemctl", a)).collect()
}

pub(super) fn uninstall(home: &Home, force: bool) -> Result<(), u8> {
    let unit_path = home.unit_path();
    // Ours, all of them: the unit, the drop-in on a package's unit, the sandbox drop-in.
    let all = [
        Found::at(&unit_path, Role::Unit)?,
        Found::at(&home.install_path(), Role::DropIn)?,
        Found::at(&home.sandbox_path(), Role::DropIn)?,
    ];
    let dirs = [home.unit_dir(), home.dropin_dir()];
    way::refuse_others_dirs(
        &dirs.each_ref().map(PathBuf::as_path),
        &home.home,
        "removed",
    )?;
    // A mask is the user's (`systemctl --user mask`), and taking it away could let a package's
    // unit start: kept, always.
    let masks: Vec<&Found> = all.iter().filter(|f| f.kind == Kind::Masked).collect();
    let ours: Vec<&Found> = all
        .iter()
        .filter(|f| f.present() && f.kind != Kind::Masked)
        .collect();
    let keep_masks = || {
        for m in &masks {
            say!(
                "Kept: {}: {}; {}",
                m.path.display(),
                m.describe_odd().unwrap_or_default(),
                unmask_hint(m)
            );
        }
    };
    if ours.is_empty() {
        let files: Vec<&Path> = all
            .iter()
            .flat_map(|f| [f.path.as_path(), f.file()])
            .collect();
        sweep_temps(&files);
        if masks.is_empty() {
            say!("Nothing to remove: {} does not exist.", unit_path.display());
        } else {
            say!("Nothing to remove: no file `service install` wrote is there.");
        }
        keep_masks();
        let packaged = home.packaged_unit();
        if packaged.is_file() {
            say!(
                "The unit {} is the package's; `systemctl --user disable --now claude-tokend` stops it.",
                packaged.display()
            );
        }
        return Ok(());
    }
    // A hand edit is no more ours to remove than to replace: refused before anything is
    // stopped, so a refusal leaves the service as it was.
    refuse_removing(&ours, force, true)?;
    refuse_unremovable(&ours)?;
    let mut reached = true;
    let mut stopped = false;
    // The unit is ours, or the package's with our settings on it: either way `install` enabled
    // it (or said to), so uninstalling stops and disables it.
    if ours
        .iter()
        .any(|f| f.path == unit_path || f.path == home.install_path())
    {
        let args = user_args(&["disable", "--now", UNIT]);
        let ran = step::run("systemctl", &args);
        if matches!(ran, Ran::TimedOut(_) | Ran::Interrupted(_)) {
            // Whether it was stopped is unknown: nothing is removed, and the rest is spelled out.
            let there: Vec<String> = ours
                .iter()
                .map(|f| shell_quote(&f.path.to_string_lossy()))
                .collect();
            let rest = [
                format!("rm -f {}", there.join(" ")),
                "systemctl --user daemon-reload".to_owned(),
            ];
            return step_result("systemctl", &args, ran, "nothing was removed", "", &rest);
        }
        if let Some(why) = unreachable(&ran) {
            // Nobody can be asked to stop it, here; the files are still ours to take back, and
            // leaving them would start the service again at the next login.
            tell!(
                "claude-tokend: warning: could not ask systemd to stop and disable the service \
                 ({why}); removing its files anyway. A copy already running under another \
                 session's manager runs until that session ends; there, \
                 `systemctl --user daemon-reload` makes systemd forget it."
            );
            reached = false;
        } else {
            let rest = [format!(
                "claude-tokend service uninstall{}",
                if force { " --force" } else { "" }
            )];
            step_result("systemctl", &args, ran, "nothing was removed", "", &rest)?;
            stopped = true;
        }
    }
    tokend_core::seams::pause_at("service-uninstall-removing");
    let before: Vec<String> = stopped
        .then(|| format!("{UNIT} (stopped and disabled)"))
        .into_iter()
        .collect();
    let then: Vec<String> = reached
        .then(|| "systemctl --user daemon-reload".to_owned())
        .into_iter()
        .collect();
    remove_all(&ours, &before, &then)?;
    keep_masks();
    // Temps a killed install left: in no one's way, but they would keep the directory.
    let files: Vec<&Path> = all
        .iter()
        .flat_map(|f| [f.path.as_path(), f.file()])
        .collect();
    sweep_temps(&files);
    // Only our own drop-ins are ours to remove; `systemctl --user edit` ones are the user's.
    // (A temp of an install at work right now is none of the user's either.)
    let dropins = home.dropin_dir();
    if std::fs::remove_dir(&dropins).is_err()
        && std::fs::read_dir(&dropins)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| !is_temp_of(&e.file_name(), &files))))
    {
        say!(
            "Kept: {} (drop-ins that `service install` did not write)",
            dropins.display()
        );
    }
    if !reached {
        // What `disable` would have removed: the link `enable` made, dangling now.
        forget_enable_link(home)?;
        say!("claude-tokend's files are removed; systemd was not asked to stop it.");
        return Ok(());
    }
    systemctl(
        &["daemon-reload"],
        "the files are removed; systemd forgets the unit at its next reload",
    )?;
    say!("claude-tokend is stopped, disabled and uninstalled.");
    Ok(())
}

/// What lifts the mask `m`.
fn unmask_hint(m: &Found) -> String {
    match m.role {
        Role::Unit => "`systemctl --user unmask claude-tokend` removes it".to_owned(),
        _ => format!("`rm {}` removes it", shell_quote(&m.path.to_string_lossy())),
    }
}

/// Refuses (exit 1) to remove what `uninstall` may not: a directory ever; without `force`, a
/// hand edit, or anything else that is not our own file (a broken link, a link to something
/// that is no file: `--force` removes the link, never what it points at).
pub(super) fn refuse_removing(files: &[&Found], force: bool, systemd: bool) -> Result<(), u8> {
    let mut edited = Vec::new();
    let mut odd = Vec::new();
    for f in files {
        match (&f.kind, f.is_link()) {
            (Kind::Directory, false) => {
                tell!(
                    "claude-tokend: {} is a directory, not a file `service install` wrote: not \
                     removing it, --force or not; move it away yourself. Nothing was removed.",
                    f.named()
                );
                return Err(exit::FAILURE);
            }
            (Kind::File, _) if state_of(f)? == Existing::Edited => edited.push(*f),
            (Kind::File, _) => {}
            _ => odd.push(*f),
        }
    }
    if force || (edited.is_empty() && odd.is_empty()) {
        return Ok(());
    }
    for f in &odd {
        tell!(
            "claude-tokend: {} is {}, not a file `service install` wrote: not removing it; \
             rerun with --force to remove it (a link is removed, never what it points at).",
            f.path.display(),
            f.describe_odd().unwrap_or_default()
        );
    }
    if edited.is_empty() {
        return Err(exit::FAILURE);
    }
    Err(refuse_edited(&[], &edited, systemd))
}

/// Removes the link `systemctl --user enable` made to the user's unit, once that unit is gone
/// (it would dangle, and stand in the way of enabling a package's unit of the same name). Only
/// a link to the user's own unit is taken.
pub(super) fn forget_enable_link(home: &Home) -> Result<(), u8> {
    let link = home.unit_dir().join("default.target.wants").join(UNIT);
    if std::fs::read_link(&link).is_ok_and(|target| target == home.unit_path()) {
        remove_saying(
            &link,
            &format!(
                "Removed: {} (the link `systemctl --user enable` made to the unit removed above)",
                link.display()
            ),
        )?;
    }
    Ok(())
}

pub(super) fn status(home: &Home) -> Result<(), u8> {
    let unit_path = home.unit_path();
    let packaged = home.packaged_unit();
    match describe_file(&unit_path, Role::Unit)? {
        Some(state) => say!("Unit file: {} ({state})", unit_path.display()),
        None if packaged.is_file() => {
            say!("Unit file: {} (installed by a package)", packaged.display());
        }
        None => {
            say!("Unit file: {} (not installed)", unit_path.display());
            say!("Install:   claude-tokend service install --now");
            return Err(exit::FAILURE);
        }
    }
    if let Some(state) = describe_file(&home.install_path(), Role::DropIn)? {
        say!("Settings:  {} ({state})", home.install_path().display());
    }
    if let Some(state) = describe_file(&home.sandbox_path(), Role::DropIn)? {
        say!("Sandbox:   {} ({state})", home.sandbox_path().display());
    }
    let args = user_args(&["status", "--no-pager", UNIT]);
    let ran = step::run("systemctl", &args);
    let result = if let Ran::Interrupted(signal) = ran {
        let shown = step::shown("systemctl", &args);
        interrupt::tell(format_args!(
            "{}",
            step::interrupted(signal, &shown, "nothing was changed")
        ));
        Err(interrupt::exit_code(signal))
    } else if let Some(why) = unreachable(&ran) {
        tell!(
            "claude-tokend: could not ask systemd whether the service is running: {why}. \
             `systemctl --user` talks to your user's service manager, which runs while you are \
             logged in (with lingering, always). From a shell outside your login session (su, \
             sudo, some ssh and container setups), point it there with \
             `export XDG_RUNTIME_DIR=/run/user/$(id -u)`; if no manager runs for your user at \
             all, start one with `loginctl enable-linger $USER` (or log in). Then run \
             `claude-tokend service status` again."
        );
        Err(super::UNREACHABLE)
    } else {
        match ran {
            Ran::Success => Ok(()),
            // systemctl status: 3 = not running (stopped or failed), 4 = unknown unit.
            Ran::Failed(s, _) => {
                tell!("claude-tokend: the service is not running ({s} from systemctl status)");
                Err(exit::FAILURE)
            }
            // unreachable() has answered for them already.
            Ran::NotRun(_) | Ran::TimedOut(_) | Ran::Interrupted(_) => Err(super::UNREACHABLE),
        }
    };
    say!("Logs:      journalctl --user -u claude-tokend -f");
    result
}

/// Why `systemctl --user` did not reach a user manager, when that is what happened: it is not
/// there to run, or it found no bus to talk over (no `XDG_RUNTIME_DIR`, no session). Either way
/// the manager's state is unknown, which is not the same as "not running".
fn unreachable(ran: &Ran) -> Option<String> {
    match ran {
        Ran::Success | Ran::Interrupted(_) => None,
        Ran::NotRun(e) => Some(format!("cannot run systemctl: {e}")),
        Ran::TimedOut(limit) => Some(format!(
            "systemctl did not finish within {} (stopped)",
            spoken(*limit)
        )),
        Ran::Failed(_, stderr) => stderr
            .lines()
            .find(|l| {
                (l.contains("Failed to connect to") && l.contains("bus"))
                    || l.contains("not been booted with systemd")
            })
            .map(|l| l.trim().to_owned()),
    }
}

fn user_args<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    let mut full = vec![OsStr::new("--user")];
    full.extend(args.iter().map(|a| OsStr::new(*a)));
    full
}

fn systemctl(args: &[&str], done: &str) -> Result<(), u8> {
    run_steps("systemctl", &[user_args(args)], done, "")
}
