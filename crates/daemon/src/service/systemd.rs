//! The systemd side of `service`: finishing an install (`daemon-reload`, `enable --now`,
//! `try-restart` after a change), uninstalling, and asking for the status, all through
//! `systemctl --user`.

use std::ffi::OsStr;
use std::process::Command as Process;

use super::files::{describe_file, remove_file};
use super::home::{Home, UNIT};
use super::step::run_step;
use crate::cli::InstallArgs;
use crate::exit;

pub(super) fn finish_install(home: &Home, args: &InstallArgs, restart: bool) -> Result<(), u8> {
    if !args.sandbox && home.sandbox_path().exists() {
        println!(
            "Kept: {} (the sandbox drop-in from an earlier install; `service uninstall` removes it)",
            home.sandbox_path().display()
        );
    }
    let unit_path = home.unit_path();
    let hint = format!(
        "the unit file {} is in place; `systemctl --user` needs your user's systemd manager \
         (over ssh or in a container it may not be running: `loginctl enable-linger $USER`, then log in again)",
        unit_path.display()
    );
    if args.now {
        systemctl(&["daemon-reload"], &hint)?;
        systemctl(&["enable", "--now", UNIT], &hint)?;
        if restart {
            // `enable --now` leaves a running service alone; it must restart to run the new files.
            systemctl(&["try-restart", UNIT], &hint)?;
        }
        println!("claude-tokend is enabled and started; it starts again at every login.");
    } else {
        println!("To start it now and at every login:");
        println!("  systemctl --user daemon-reload");
        println!("  systemctl --user enable --now {UNIT}");
        if restart {
            println!(
                "(Already running? `systemctl --user restart {UNIT}` makes it use the new file.)"
            );
        }
    }
    println!(
        "To keep it running while you are logged out (a server, ssh sessions): loginctl enable-linger $USER"
    );
    println!("Status: claude-tokend service status");
    println!("Logs:   journalctl --user -u claude-tokend -f");
    Ok(())
}

pub(super) fn uninstall(home: &Home) -> Result<(), u8> {
    let unit_path = home.unit_path();
    let sandbox = home.sandbox_path();
    if !unit_path.exists() && !sandbox.exists() {
        println!("Nothing to remove: {} does not exist.", unit_path.display());
        return Ok(());
    }
    if unit_path.exists() {
        let hint = format!(
            "nothing was removed; to remove it without the service manager, delete {} \
             (and {}) and run `systemctl --user daemon-reload` when it is running",
            unit_path.display(),
            home.dropin_dir().display()
        );
        systemctl(&["disable", "--now", UNIT], &hint)?;
    }
    for path in [&unit_path, &sandbox] {
        remove_file(path)?;
    }
    // Only our own drop-in is ours to remove; `systemctl --user edit` ones are the user's.
    let dropins = home.dropin_dir();
    if std::fs::remove_dir(&dropins).is_err() && dropins.exists() {
        println!(
            "Kept: {} (drop-ins that `service install` did not write)",
            dropins.display()
        );
    }
    systemctl(
        &["daemon-reload"],
        "the files are removed; systemd forgets the unit at its next reload",
    )?;
    println!("claude-tokend is stopped, disabled and uninstalled.");
    Ok(())
}

pub(super) fn status(home: &Home) -> Result<(), u8> {
    let unit_path = home.unit_path();
    let Some(state) = describe_file(&unit_path)? else {
        println!("Unit file: {} (not installed)", unit_path.display());
        println!("Install:   claude-tokend service install --now");
        return Err(exit::FAILURE);
    };
    println!("Unit file: {} ({state})", unit_path.display());
    if let Some(state) = describe_file(&home.sandbox_path())? {
        println!("Sandbox:   {} ({state})", home.sandbox_path().display());
    }
    let args = ["--user", "status", "--no-pager", UNIT];
    println!("Running: systemctl {}", args.join(" "));
    let ok = match Process::new("systemctl").args(args).status() {
        Ok(s) if s.success() => true,
        // systemctl status: 3 = not running (stopped or failed), 4 = unknown unit.
        Ok(s) => {
            eprintln!("claude-tokend: the service is not running ({s} from systemctl status)");
            false
        }
        Err(e) => {
            eprintln!("claude-tokend: cannot run systemctl: {e}");
            false
        }
    };
    println!("Logs:      journalctl --user -u claude-tokend -f");
    if ok { Ok(()) } else { Err(exit::FAILURE) }
}

fn systemctl(args: &[&str], hint: &str) -> Result<(), u8> {
    let mut full = vec![OsStr::new("--user")];
    full.extend(args.iter().map(OsStr::new));
    run_step("systemctl", &full, hint)
}
