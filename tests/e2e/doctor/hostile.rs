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
