//! `service install`'s plan: which files this install writes (the unit, or a drop-in on a
//! package's unit; the sandbox drop-in; the agent) and which it takes away (a file of an
//! earlier install that would now stand in the way), each compared with what is there; nothing
//! is written or removed unless all of it may be (a hand edit needs `--force`). Then the
//! manager's module finishes (reload, enable, restart).

use std::path::{Path, PathBuf};

use super::carry::{carried_logins, carried_settings, writable_dirs};
use super::files::{
    Existing, Planned, Syntax, changed_lines, present, refuse_edited, remove_file, same_file,
    state_of, warn_if_others_write,
};
use super::home::Home;
use super::program::program_path;
use super::render::{render_agent, render_dropin, render_sandbox, render_unit};
use super::{launchd, systemd};
use crate::cli::{InstallArgs, Manager, Settings};

/// A file an earlier install left that this one removes, and why.
struct Stale {
    path: PathBuf,
    state: Existing,
    why: String,
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
    match (manager, &packaged) {
        (Manager::Systemd, Some(packaged)) => {
            files.push(Planned::new(
                home.install_path(),
                render_dropin(&program, &login_args, &env),
                Syntax::Hash,
            ));
            // A unit in the user's directory shadows the package's whole (systemd reads the
            // user's first): the package's upgrades of it would never arrive, nor would it run
            // what this install says. An earlier install's is taken away (a hand edit only
            // with --force); the same file reached by a link is no second unit.
            let unit = home.unit_path();
            if present(&unit) && !same_file(&unit, packaged) {
                stale.push(Stale {
                    state: state_of(&unit)?,
                    path: unit,
                    why: format!(
                        "it would shadow the unit the package installed, {}",
                        packaged.display()
                    ),
                });
            }
        }
        (Manager::Systemd, None) => {
            files.push(Planned::new(
                home.unit_path(),
                render_unit(&program, &login_args, &env),
                Syntax::Hash,
            ));
            // The drop-in written while a package's unit was there (since removed) would
            // replace this unit's ExecStart= and add its old settings.
            if present(&home.install_path()) {
                stale.push(Stale {
                    path: home.install_path(),
                    state: state_of(&home.install_path())?,
                    why: "it carried the settings onto a package's unit, which is gone, and \
                          would override the unit written now"
                        .to_owned(),
                });
            }
        }
        (Manager::Launchd, _) => files.push(Planned::new(
            home.agent_path(),
            render_agent(&program, &login_args, &home.home, &env),
            Syntax::Xml,
        )),
    }
    // A sandbox drop-in already there is kept and rewritten with the unit, even without
    // --sandbox this time: it is how the user asked for the sandbox (deleting it is how they
    // go without), and one left as it was would name the old logins' directories in
    // ReadWritePaths=, so that ProtectSystem=strict makes every refresh of the new ones fail.
    // Dropping it silently instead would take away hardening a reinstall for another setting
    // never asked to lose.
    if manager == Manager::Systemd && (args.sandbox || present(&home.sandbox_path())) {
        let dirs = writable_dirs(settings)?;
        files.push(Planned::new(
            home.sandbox_path(),
            render_sandbox(&dirs),
            Syntax::Hash,
        ));
    }
    let files: Vec<Planned> = files
        .into_iter()
        .map(|f| f.and_then(|f| f.compare()))
        .collect::<Result<_, _>>()?;

    // Nothing is written unless everything may be: a half-done install is harder to reason about.
    let replacing: Vec<&Path> = files
        .iter()
        .filter(|f| f.existing == Existing::Edited)
        .map(|f| f.path.as_path())
        .collect();
    let removing: Vec<&Stale> = stale
        .iter()
        .filter(|s| s.state == Existing::Edited)
        .collect();
    if (!replacing.is_empty() || !removing.is_empty()) && !args.force {
        for s in &removing {
            eprintln!(
                "claude-tokend: {} is in the way: {}.",
                s.path.display(),
                s.why
            );
        }
        let removing: Vec<&Path> = removing.iter().map(|s| s.path.as_path()).collect();
        return Err(refuse_edited(
            &replacing,
            &removing,
            manager == Manager::Systemd,
        ));
    }
    for f in &files {
        warn_if_others_write(&f.path);
    }

    println!("Service program: {}", program.display());
    if let Some(packaged) = &packaged {
        println!(
            "Packaged unit: {} (a package installed it: this install puts its settings in a \
             drop-in on it, not in a second unit)",
            packaged.display()
        );
    }
    if env.is_empty() {
        println!("Settings: the defaults (no flags or variables to carry into the service)");
    } else {
        for (k, v) in &env {
            println!("Setting:  {k}={v}");
        }
    }
    for f in &files {
        write(f)?;
        if f.path == home.sandbox_path() && !args.sandbox {
            println!(
                "  (the sandbox drop-in of an earlier install, kept in step with the unit; to go \
                 without it, delete it and run `systemctl --user daemon-reload`)"
            );
        }
    }
    for s in &stale {
        remove_file(&s.path)?;
        println!("  ({})", s.why);
        if s.path == home.unit_path() {
            systemd::forget_enable_link(home)?;
        }
    }
    let changed = !stale.is_empty() || files.iter().any(|f| f.existing != Existing::Same);
    // A service installed before may be running on the old files; a first install's is not.
    let restart =
        changed && (!stale.is_empty() || files.iter().any(|f| f.existing != Existing::Absent));
    match manager {
        Manager::Systemd => {
            let in_place = files.first().map(|f| f.path.as_path());
            systemd::finish_install(in_place.unwrap_or(&home.unit_path()), args, restart)
        }
        Manager::Launchd => launchd::finish_install(home, args, changed),
    }
}

/// Writes one planned file (unless it is there already) and says what it did.
fn write(f: &Planned) -> Result<(), u8> {
    match f.existing {
        Existing::Same => println!("Unchanged: {}", f.path.display()),
        Existing::Absent => {
            f.write()?;
            println!("Wrote: {}", f.path.display());
        }
        Existing::Ours | Existing::Edited => {
            f.write()?;
            println!("Replaced: {}", f.path.display());
            // A reinstall without the flags of the first one drops its settings: show it.
            let old = f.old.as_deref().unwrap_or_default();
            for (sign, line) in changed_lines(old, &f.content) {
                println!("  {sign} {line}");
            }
        }
    }
    Ok(())
}
