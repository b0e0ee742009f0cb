//! Doctor against a hostile or broken machine: files that are not files (a FIFO as the unit or
//! a drop-in), a service manager that never lets go of its pipes. Doctor must answer within
//! its own limits whatever it finds.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use claude_tokend_e2e::*;

use super::support::*;

pub fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Doctor with systemd unreachable (so the unit files are read), its XDG config in `xdg`.
fn no_bus(home: &TempHome, xdg: &Path) -> Cmd {
    doctor(home, &["--json", "--offline"])
        .env("XDG_CONFIG_HOME", xdg)
        .env("FAKE_NO_BUS", "1")
        .timeout(Duration::from_secs(8))
}

#[test]
fn a_fifo_as_the_unit_file_or_a_drop_in_does_not_hang_doctor() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let xdg = home.path().join("xdg");
    let units = xdg.join("systemd/user");
    fs::create_dir_all(&units).unwrap();
    mkfifo(&units.join("claude-tokend.service"));
    let r = Report::run(no_bus(&home, &xdg));
    r.out
        .check(r.out.elapsed < Duration::from_secs(5), "answered at once");
    r.expect("keeper", "warn", "systemd could not be asked");
    // A regular unit, and a FIFO among its drop-ins.
    fs::remove_file(units.join("claude-tokend.service")).unwrap();
    Cmd::new(&home)
        .env("XDG_CONFIG_HOME", &xdg)
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "systemd")
        .args(["service", "install"])
        .run()
        .expect_code(0);
    let dropins = units.join("claude-tokend.service.d");
    fs::create_dir_all(&dropins).unwrap();
    mkfifo(&dropins.join("override.conf"));
    let r = Report::run(no_bus(&home, &xdg));
    r.out
        .check(r.out.elapsed < Duration::from_secs(5), "answered at once");
    r.expect("claude-code-store", "ok", "which the systemd user service");
}

/// A `systemctl` that answers `show` for a unit that is not there, after leaving a child
/// (its pid written to `pidfile`) that holds its stderr open for a minute; with `hang`, it
/// never answers either.
fn lingering_systemctl(dir: &Path, pidfile: &Path, hang: bool) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    let script = format!(
        "#!/bin/sh\n(exec sleep 60 >/dev/null) &\necho $! > '{}'\n\
         printf 'LoadState=not-found\\nUnitFileState=\\nActiveState=inactive\\nSubState=dead\\nMainPID=0\\n'\n\
         {}exit 0\n",
        pidfile.display(),
        if hang {
            "exec sleep 60 >/dev/null\n"
        } else {
            ""
        }
    );
    let tmp = dir.join(".systemctl");
    fs::write(&tmp, script).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, dir.join("systemctl")).unwrap();
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: killed all the same).
fn dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn lingering_run(home: &TempHome, hang: bool) -> (Report, u32) {
    let dir = home.path().join("lingering-bin");
    let pidfile = home.path().join("child.pid");
    lingering_systemctl(&dir, &pidfile, hang);
    let r = Report::run(
        doctor(home, &["--json", "--offline"])
            .env("PATH", format!("{}:{}", dir.display(), fake_path(&[])))
            .timeout(Duration::from_secs(9)),
    );
    let pid: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (r, pid)
}

#[test]
fn systemctl_whose_child_keeps_stderr_open_is_not_waited_for_and_the_child_is_killed() {
    if !Path::new("/proc/self/stat").exists() {
        eprintln!("skipped: no /proc to tell whether the child was killed");
        return;
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let (r, child) = lingering_run(&home, false);
    r.out.check(
        r.out.elapsed < Duration::from_secs(3),
        "systemctl exited at once: doctor does not wait for its child",
    );
    // systemctl's answer is used: a unit that is not installed.
    r.expect("keeper", "warn", "no claude-tokend daemon keeps this login");
    r.out.check(
        wait_until(Duration::from_secs(2), || dead(child)),
        format!("systemctl's child (pid {child}) was left running"),
    );
}

#[test]
fn systemctl_that_never_answers_is_killed_with_its_children_after_5s() {
    if !Path::new("/proc/self/stat").exists() {
        eprintln!("skipped: no /proc to tell whether the child was killed");
        return;
    }
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let (r, child) = lingering_run(&home, true);
    r.out.check(
        r.out.elapsed < Duration::from_secs(7),
        "doctor gave up on systemctl after its 5 s",
    );
    r.expect("keeper", "warn", "did not answer within 5s");
    r.out.check(
        wait_until(Duration::from_secs(2), || dead(child)),
        format!("systemctl's child (pid {child}) was left running"),
    );
}
