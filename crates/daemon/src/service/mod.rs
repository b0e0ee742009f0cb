//! `claude-tokend service install|uninstall|status`: the daemon as a per-user service, under
//! systemd (`systemctl --user`) or launchd (a LaunchAgent). This module owns the dispatch and the
//! install plan (which files, compared with what is there, written only if all may be); the
//! pieces live beside it: `render` fills the templates, `carry` works out the settings and paths
//! that go into them, `program` the path the service runs, `files` compares and writes, `systemd` and `launchd` drive the service
//! managers through `step`, which prints every command, because a user who can see the commands
//! can repeat, undo or debug them by hand. It never writes the credentials file.
//!
//! The manager is chosen by the target OS; `CLAUDE_TOKEND_SERVICE_MANAGER` (or the hidden
//! `--manager`) overrides it, so both code paths run, and are tested, on any Unix.

mod carry;
mod files;
mod home;
mod launchd;
mod program;
mod render;
mod step;
mod systemd;

use std::path::Path;

use crate::cli::{InstallArgs, Manager, ManagerArg, ServiceAction, Settings};
use crate::exit;

use carry::{carried_logins, carried_settings, writable_dirs};
use files::{Existing, Planned, Syntax, changed_lines, refuse_edited, warn_if_others_write};
use home::Home;
use program::program_path;
use render::{render_agent, render_sandbox, render_unit};

/// `service status` when the service manager could not be asked at all (no user bus, no
/// `systemctl`/`launchctl`): sysexits' EX_UNAVAILABLE, so a script can tell "I could not find
/// out" from "not running" (1).
const UNREACHABLE: u8 = 69;

/// The manager asked for, else the one of the OS this was built for.
fn resolve(arg: &ManagerArg) -> Manager {
    arg.manager.unwrap_or(if cfg!(target_os = "macos") {
        Manager::Launchd
    } else {
        Manager::Systemd
    })
}

pub fn run(settings: &Settings, action: &ServiceAction) -> u8 {
    let result = match action {
        ServiceAction::Install(args) => {
            let manager = resolve(&args.manager);
            if args.sandbox && manager != Manager::Systemd {
                eprintln!(
                    "claude-tokend: --sandbox is a systemd drop-in; launchd has no equivalent"
                );
                return exit::USAGE;
            }
            Home::from_env().and_then(|home| install(settings, args, manager, &home))
        }
        ServiceAction::Uninstall(args) => {
            Home::from_env().and_then(|home| match resolve(&args.manager) {
                Manager::Systemd => systemd::uninstall(&home, args.force),
                Manager::Launchd => launchd::uninstall(&home, args.force),
            })
        }
        ServiceAction::Status(m) => Home::from_env().and_then(|home| match resolve(m) {
            Manager::Systemd => systemd::status(&home),
            Manager::Launchd => launchd::status(&home),
        }),
    };
    match result {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}

// ---------------------------------------------------------------------------------------------
// install

fn install(
    settings: &Settings,
    args: &InstallArgs,
    manager: Manager,
    home: &Home,
) -> Result<(), u8> {
    // The daemon the service runs would refuse these mirrors at start (exit 2, and systemd
    // does not restart it): refuse them now, before anything is written.
    crate::commands::writing_mirrors(settings)?;
    let program = program_path()?;
    let env = carried_settings(settings)?;
    let login_args = carried_logins(settings)?;
    let mut files = Vec::new();
    match manager {
        Manager::Systemd => {
            files.push(Planned::new(
                home.unit_path(),
                render_unit(&program, &login_args, &env),
                Syntax::Hash,
            ));
            // A sandbox drop-in already there is kept and rewritten with the unit, even without
            // --sandbox this time: it is how the user asked for the sandbox (deleting it is how
            // they go without), and one left as it was would name the old logins' directories
            // in ReadWritePaths=, so that ProtectSystem=strict makes every refresh of the new
            // ones fail. Dropping it silently instead would take away hardening a reinstall for
            // another setting never asked to lose.
            if args.sandbox || std::fs::symlink_metadata(home.sandbox_path()).is_ok() {
                let dirs = writable_dirs(settings)?;
                files.push(Planned::new(
                    home.sandbox_path(),
                    render_sandbox(&dirs),
                    Syntax::Hash,
                ));
            }
        }
        Manager::Launchd => files.push(Planned::new(
            home.agent_path(),
            render_agent(&program, &login_args, &home.home, &env),
            Syntax::Xml,
        )),
    }
    let files: Vec<Planned> = files
        .into_iter()
        .map(|f| f.and_then(|f| f.compare()))
        .collect::<Result<_, _>>()?;

    // Nothing is written unless everything may be: a half-done install is harder to reason about.
    let refused: Vec<&Planned> = files
        .iter()
        .filter(|f| f.existing == Existing::Edited)
        .collect();
    if !refused.is_empty() && !args.force {
        let paths: Vec<&Path> = refused.iter().map(|f| f.path.as_path()).collect();
        return Err(refuse_edited(&paths, false, manager == Manager::Systemd));
    }
    for f in &files {
        warn_if_others_write(&f.path);
    }

    println!("Service program: {}", program.display());
    if env.is_empty() {
        println!("Settings: the defaults (no flags or variables to carry into the service)");
    } else {
        for (k, v) in &env {
            println!("Setting:  {k}={v}");
        }
    }
    for f in &files {
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
        if f.path == home.sandbox_path() && !args.sandbox {
            println!(
                "  (the sandbox drop-in of an earlier install, kept in step with the unit; to go \
                 without it, delete it and run `systemctl --user daemon-reload`)"
            );
        }
    }
    let changed = files.iter().any(|f| f.existing != Existing::Same);
    // A service installed before may be running on the old files; a first install's is not.
    let restart = changed && files.iter().any(|f| f.existing != Existing::Absent);
    match manager {
        Manager::Systemd => systemd::finish_install(home, args, restart),
        Manager::Launchd => launchd::finish_install(home, args, changed),
    }
}
