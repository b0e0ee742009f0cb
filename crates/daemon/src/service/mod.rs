//! `claude-tokend service install|uninstall|status`: the daemon as a per-user service, under
//! systemd (`systemctl --user`) or launchd (a LaunchAgent). This module owns the dispatch; the
//! pieces live beside it: `install` plans an install (which files, compared with what is
//! there, written only if all may be), `render` fills the templates, `carry` works out the
//! settings and paths that go into them, `program` the path the service runs, `found` tells
//! what is at a file's path (a file, a link, a mask), `files` compares, `way` checks whose
//! directories the files are reached through, `commit` writes all or nothing, `systemd` and `launchd` drive the service managers through `step`, which prints
//! every command, because a user who can see the commands can repeat, undo or debug them by
//! hand. It never writes the credentials file.
//!
//! The manager is chosen by the target OS; `CLAUDE_TOKEND_SERVICE_MANAGER` (or the hidden
//! `--manager`) overrides it, so both code paths run, and are tested, on any Unix.

/// `println!` that never panics: a reader that has gone (`service status | head -1`) loses the
/// rest of the output, never the work (a panic could land between two renames, or between two
/// `systemctl` steps).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::show::say(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (stderr on a closed pipe: `2>&1 | head -1`), as [`say!`].
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::service::tell_line(format_args!($($arg)*))
    };
}

mod carry;
mod commit;
mod files;
mod found;
mod home;
mod install;
mod launchd;
mod program;
mod render;
mod step;
mod systemd;
mod way;

use crate::cli::{Manager, ManagerArg, ServiceAction, Settings};
use crate::exit;

use home::Home;
use install::install;

/// `service status` when the service manager could not be asked at all (no user bus, no
/// `systemctl`/`launchctl`): sysexits' EX_UNAVAILABLE, so a script can tell "I could not find
/// out" from "not running" (1).
const UNREACHABLE: u8 = 69;

/// Writes one line to stderr, ignoring failure: see [`tell!`].
pub(crate) fn tell_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(line)
        .and_then(|()| stderr.write_all(b"\n"));
}

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
                tell!("claude-tokend: --sandbox is a systemd drop-in; launchd has no equivalent");
                return exit::USAGE;
            }
            Home::from_env().and_then(|home| {
                way::refuse_root_with_anothers_home(&home.home)?;
                install(settings, args, manager, &home)
            })
        }
        ServiceAction::Uninstall(args) => Home::from_env().and_then(|home| {
            way::refuse_root_with_anothers_home(&home.home)?;
            match resolve(&args.manager) {
                Manager::Systemd => systemd::uninstall(&home, args.force),
                Manager::Launchd => launchd::uninstall(&home, args.force),
            }
        }),
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
