//! `service install`'s plan: which files this install writes (the unit, or a drop-in on a
//! package's unit; the sandbox drop-in; the agent) and which it takes away (a file of an
//! earlier install that would now stand in the way), each compared with what is there; nothing
//! is written or removed unless all of it may be (a hand edit needs `--force`; a mask, a
//! device or a directory is never written through), and then all of it at once (`commit`).
//! Then the manager's module finishes (reload, enable, restart).

use std::path::{Path, PathBuf};

use super::carry::{carried_logins, carried_settings, writable_dirs};
use super::commit::{NewFile, put_in_place, stopped as stopped_by, sweep_temps, this_command};
use super::files::{
    Existing, Planned, Syntax, changed_lines, fix_mode, refuse_edited, removed_line, same_file,
    state_of,
};
use super::found::{Found, Kind, Role, Verdict};
use super::home::{Home, parent};
use super::program::program_path;
use super::render::{render_agent, render_dropin, render_sandbox, render_unit};
use super::way;
use super::{launchd, systemd};
use crate::cli::{InstallArgs, Manager, Settings};
use crate::exit;

/// A file an earlier install left that this one removes, and why.
struct Stale {
    found: Found,
    state: Existing,
    why: String,
    /// How to keep it instead, when it may be the user's own.
    keep: Option<&'static str>,
}

pub(super) fn install(
    settings: &Settings,
    args: &InstallArgs,
    manager: Manager,
    home: &Home,
) -> Result<(), u8> {
    // The daemon the service runs would refuse these mirrors at start (exit 2, and systemd
    // does not restart it): refuse them now, before anything is written.
    crate::commands::writing_mirrors(settings)?;
    let program = program_path(manager)?;
    let env = carried_settings(settings)?;
    let login_args = carried_logins(settings)?;
    let mut files = Vec::new();
    let mut stale = Vec::new();
    // A package's unit, when there is one: the settings go onto it in a drop-in (CONTRACT.md
    // "Packages"), and no second unit is written beside it.
    let packaged =
        Some(home.packaged_unit()).filter(|p| manager == Manager::Systemd && p.is_file());
    if manager == Manager::Systemd {
        // A mask in the user's directory hides every unit of this name, the package's too, so
        // it stops the install whichever file it writes; only the user lifts it.
        let unit = Found::at(&home.unit_path(), Role::Unit)?;
        if let (Kind::Masked, Verdict::Never(why)) = (&unit.kind, unit.verdict()) {
            tell!("claude-tokend: {why}. Nothing was written.");
            return Err(exit::FAILURE);
        }
    }
    match (manager, &packaged) {
        (Manager::Systemd, Some(packaged)) => {
            files.push(Planned::at(
                home.install_path(),
                Role::DropIn,
                render_dropin(&program, &login_args, &env),
                Syntax::Hash,
            )?);
            // A unit in the user's directory shadows the package's whole (systemd reads the
            // user's first): the package's upgrades of it would never arrive, nor would it run
            // what this install says. An earlier install's is taken away (a hand edit only
            // with --force); the same file reached by a link is no second unit.
            let unit = Found::at(&home.unit_path(), Role::Unit)?;
            if unit.present() && !same_file(&unit.path, packaged) {
                stale.push(Stale {
                    state: state_of(&unit)?,
                    found: unit,
                    why: format!(
                        "it would shadow the unit the package installed, {}",
                        packaged.display()
                    ),
                    keep: None,
                });
            }
        }
        (Manager::Systemd, None) => {
            files.push(Planned::at(
                home.unit_path(),
                Role::Unit,
                render_unit(&program, &login_args, &env),
                Syntax::Hash,
            )?);
            // The drop-in written while a package's unit was there (since removed) would
            // replace this unit's ExecStart= and add its old settings. A masked one (a link to
            // /dev/null, or empty) changes nothing, and is the user's.
            let dropin = Found::at(&home.install_path(), Role::DropIn)?;
            if dropin.present() && dropin.kind != Kind::Masked {
                let state = state_of(&dropin)?;
                let (why, keep) = if state == Existing::Ours {
                    (
                        "it carried the settings onto a package's unit, which is gone, and \
                         would override the unit written now"
                            .to_owned(),
                        None,
                    )
                } else {
                    (
                        "`service install` writes a drop-in of this name only onto a package's \
                         unit, and there is none; this one it did not write (or it was edited \
                         since), and systemd would apply it on top of the unit written now"
                            .to_owned(),
                        Some(
                            "to keep your settings, rename it (override.conf is where \
                             `systemctl --user edit claude-tokend` keeps them) and install again",
                        ),
                    )
                };
                stale.push(Stale {
                    found: dropin,
                    state,
                    why,
                    keep,
                });
            }
        }
        (Manager::Launchd, _) => files.push(Planned::at(
            home.agent_path(),
            Role::Agent,
            render_agent(&program, &login_args, &home.home, &env),
            Syntax::Xml,
        )?),
    }
    // A sandbox drop-in already there is kept and rewritten with the unit, even without
    // --sandbox this time: it is how the user asked for the sandbox (deleting it is how they
    // go without), and one left as it was would name the old logins' directories in
    // ReadWritePaths=, so that ProtectSystem=strict makes every refresh of the new ones fail.
    // Dropping it silently instead would take away hardening a reinstall for another setting
    // never asked to lose. A masked one (a link to /dev/null, or an empty file: to systemd the
    // same, a drop-in that adds nothing and hides one of its name read after it) is how the
    // user goes without it: left alone unless --sandbox asks for it.
    if manager == Manager::Systemd {
        let sandbox = Found::at(&home.sandbox_path(), Role::DropIn)?;
        let earlier = sandbox.present() && sandbox.kind != Kind::Masked;
        if args.sandbox || earlier {
            let dirs = writable_dirs(settings)?;
            files.push(Planned::at(
                home.sandbox_path(),
                Role::DropIn,
                render_sandbox(&dirs),
                Syntax::Hash,
            )?);
        }
    }

    // Where anything is written, removed or created: each file (its links followed: where they
    // lead is written), the directory a file is removed from, the agent's log directory.
    let log_dir = home.log_path().parent().map(Path::to_path_buf);
    let stale_dirs: Vec<PathBuf> = stale.iter().map(|s| parent(&s.found.path)).collect();
    let touched: Vec<&Path> = files
        .iter()
        .map(|f| f.found.path.as_path())
        .chain(stale_dirs.iter().map(PathBuf::as_path))
        .chain(log_dir.as_deref().filter(|_| manager == Manager::Launchd))
        .collect();
    way::refuse_others_dirs(&touched, &home.home, "written")?;
    refuse_what_may_not_be_done(&files, &stale, args.force, manager)?;
    way::warn_if_others_write(&touched);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Root with another user's HOME was refused already: this HOME is root's.
        tell!(
            "claude-tokend: note: running as root, with a HOME root owns ({}): this installs \
             the service for root, not for any other user",
            home.home.display()
        );
    }

    say!("Service program: {}", program.display());
    if let Some(packaged) = &packaged {
        say!(
            "Packaged unit: {} (a package installed it: this install puts its settings in a \
             drop-in on it, not in a second unit)",
            packaged.display()
        );
    }
    if env.is_empty() {
        say!("Settings: the defaults (no flags or variables to carry into the service)");
    } else {
        for (k, v) in &env {
            say!("Setting:  {k}={v}");
        }
    }
    // Nothing is written unless everything can be: a half-done install is harder to reason
    // about (a unit for one login beside a sandbox for another).
    let writes: Vec<NewFile<'_>> = files
        .iter()
        .filter(|f| f.existing != Existing::Same)
        .map(|f| NewFile {
            dest: f.dest(),
            shown: f.found.named(),
            content: f.content.as_bytes(),
        })
        .collect();
    let removing: Vec<&Found> = stale.iter().map(|s| &s.found).collect();
    let changed = !stale.is_empty() || !writes.is_empty();
    // A service installed before may be running on the old files; a first install's is not.
    let restart =
        changed && (!stale.is_empty() || files.iter().any(|f| f.existing != Existing::Absent));
    // Temps a killed install left beside these files would otherwise stay for good (each is
    // named for the process that made it).
    let dests: Vec<&Path> = files.iter().map(Planned::dest).collect();
    sweep_temps(&dests);
    let stopped = put_in_place(&writes, &removing, &this_command())?;
    for f in &files {
        report(f);
        fix_mode(f);
        if f.found.path == home.sandbox_path() && !args.sandbox {
            say!(
                "  (the sandbox drop-in of an earlier install, kept in step with the unit; to go \
                 without it, delete it and run `systemctl --user daemon-reload`)"
            );
        }
    }
    for s in &stale {
        say!("{}", removed_line(&s.found));
        say!("  ({})", s.why);
        if s.found.path == home.unit_path() {
            systemd::forget_enable_link(home)?;
        }
        // Its directory held only this drop-in: an empty directory is no drop-in of anyone's.
        if s.found.path == home.install_path() && std::fs::remove_dir(home.dropin_dir()).is_ok() {
            say!("Removed: {} (empty now)", home.dropin_dir().display());
        }
    }
    if let Some(signal) = stopped {
        // The files are in place (said already); nothing is asked of the service manager.
        let rest = match manager {
            Manager::Systemd => systemd::steps_left(args, restart),
            Manager::Launchd => launchd::steps_left(home, args, changed),
        };
        return Err(stopped_by(signal, rest));
    }
    match manager {
        Manager::Systemd => {
            let in_place = files
                .first()
                .map_or_else(|| home.unit_path(), |f| f.found.path.clone());
            systemd::finish_install(&in_place, args, restart)
        }
        Manager::Launchd => launchd::finish_install(home, args, changed),
    }
}

/// Refuses (exit 1) what this install may not do: never write through a mask, a device, a FIFO
/// or a directory, --force or not; without --force, replace or remove no hand edit and replace
/// no broken link. Each refusal names the path, where its link leads, and what to do.
fn refuse_what_may_not_be_done(
    files: &[Planned],
    stale: &[Stale],
    force: bool,
    manager: Manager,
) -> Result<(), u8> {
    let mut never = Vec::new();
    let mut forceable = Vec::new();
    let mut replacing = Vec::new();
    for f in files {
        match f.found.verdict() {
            Verdict::Never(why) => never.push(why),
            Verdict::ReplaceLinkWithForce(why) => forceable.push(why),
            Verdict::Write if f.existing == Existing::Edited => replacing.push(&f.found),
            Verdict::Write => {}
        }
    }
    let mut removing = Vec::new();
    for s in stale {
        match (&s.found.kind, s.found.is_link()) {
            (Kind::Directory, false) => never.push(format!(
                "{} is in the way ({}), and is a directory: --force does not remove a directory; \
                 move it away yourself",
                s.found.named(),
                s.why
            )),
            (Kind::File, _) if s.state == Existing::Ours => {}
            (Kind::File, _) => removing.push(s),
            // A link (broken, or to something that is no file) or a FIFO: removing it loses
            // nothing, but it is not ours either.
            _ => forceable.push(format!(
                "{} is in the way ({}); it is {}: rerun with --force to remove it (a link is \
                 removed, never what it points at)",
                s.found.path.display(),
                s.why,
                s.found.describe_odd().unwrap_or_default()
            )),
        }
    }
    if !never.is_empty() {
        for why in &never {
            tell!("claude-tokend: {why}.");
        }
        tell!("claude-tokend: nothing was written.");
        return Err(exit::FAILURE);
    }
    if force || (forceable.is_empty() && replacing.is_empty() && removing.is_empty()) {
        return Ok(());
    }
    for s in &removing {
        tell!(
            "claude-tokend: {} is in the way: {}.",
            s.found.named(),
            s.why
        );
        if let Some(keep) = s.keep {
            tell!("claude-tokend: {keep}.");
        }
    }
    for why in &forceable {
        tell!("claude-tokend: {why}.");
    }
    if replacing.is_empty() && removing.is_empty() {
        tell!("claude-tokend: nothing was written.");
        return Err(exit::FAILURE);
    }
    let removing: Vec<&Found> = removing.iter().map(|s| &s.found).collect();
    Err(refuse_edited(
        &replacing,
        &removing,
        manager == Manager::Systemd,
    ))
}

/// Says what became of one planned file (it is in place by now).
fn report(f: &Planned) {
    let named = f.found.named();
    match (f.existing, &f.found.kind) {
        (Existing::Same, _) => say!("Unchanged: {named}"),
        (Existing::Absent, _) => say!("Wrote: {named}"),
        (_, Kind::File) => {
            say!(
                "Replaced: {named}{}",
                if f.found.is_link() {
                    " (the file the link leads to has the new content)"
                } else {
                    ""
                }
            );
            // A reinstall without the flags of the first one drops its settings: show it.
            let old = f.old.as_deref().unwrap_or_default();
            for (sign, line) in changed_lines(old, &f.content) {
                say!("  {sign} {line}");
            }
        }
        // --force on a broken link, or one to a directory: the link itself was replaced.
        (_, _) => say!(
            "Replaced: {named}: the link itself, by a plain file (nothing was written through it)"
        ),
    }
}
