//! The service as doctor learns it: `systemctl --user show` (installed, enabled, running, its
//! pid, the logins in its `ExecStart=` and `Environment=`) or `launchctl print gui/<uid>/…`;
//! when systemd cannot be asked (no user bus, no systemctl) it says so plainly and reads the
//! unit file `service install` wrote. It only asks: the managers' call logs hold nothing else.

use std::fs;
use std::path::Path;
use std::time::Duration;

use claude_tokend_e2e::*;

use super::support::*;

/// A daemon keeping the default login, and its pid once it has recorded itself as its keeper.
fn daemon(home: &TempHome, server: &TokenServer) -> (Running, u32) {
    let d = Cmd::new(home).server(server).spawn();
    let pid = d.id();
    let recorded = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(home.claude_dir().join(".credentials.json.lock"))
            .is_ok_and(|t| t.contains(&format!("keeper {pid} ")))
    });
    assert!(
        recorded,
        "the daemon (pid {pid}) never recorded itself as the keeper"
    );
    (d, pid)
}

fn calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

const SHOW: &str = "systemctl --user show claude-tokend.service \
                    --property=LoadState,UnitFileState,ActiveState,SubState,MainPID,ExecStart,Environment";

#[test]
fn a_running_service_keeping_the_login_is_named_with_its_pid() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let (d, pid) = daemon(&home, &server);
    let show = home.path().join("show.txt");
    fs::write(
        &show,
        format!(
            "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\n\
             MainPID={pid}\nExecStart={{ path=/usr/bin/claude-tokend ; argv[]=/usr/bin/claude-tokend \
             --config-dir {} ; ignore_errors=no ; start_time=[n/a] }}\nEnvironment=\n",
            home.claude_dir().display()
        ),
    )
    .unwrap();
    let log = home.path().join("calls.log");
    let r = Report::run(
        doctor(&home, &["--json", "--offline"])
            .env("FAKE_SHOW", &show)
            .env("FAKE_LOG", &log),
    );
    stop(d);
    r.out.expect_code(0);
    r.expect(
        "keeper",
        "ok",
        &format!(
            "kept fresh by claude-tokend pid {pid}, the systemd user service \
             claude-tokend.service (enabled, active (running))"
        ),
    );
    r.expect("claude-code-store", "ok", "which the systemd user service");
    check_eq("what systemd was asked", calls(&log), vec![SHOW.to_owned()]);
}

#[test]
fn a_service_installed_but_not_running_is_a_warning() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let show = home.path().join("show.txt");
    fs::write(
        &show,
        "LoadState=loaded\nUnitFileState=disabled\nActiveState=failed\nSubState=failed\n\
         MainPID=0\nExecStart={ path=/usr/bin/claude-tokend ; argv[]=/usr/bin/claude-tokend ; }\n\
         Environment=\n",
    )
    .unwrap();
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("FAKE_SHOW", &show));
    r.out.expect_code(0);
    r.expect("keeper", "warn", "is installed but not running");
    let fix = r.fix("keeper");
    r.out.check(
        fix.contains("systemctl --user enable --now claude-tokend.service")
            && fix.contains("journalctl --user -u claude-tokend"),
        "it says how to start it and where to see why it stopped",
    );
}

#[test]
fn without_a_user_bus_doctor_says_so_and_reads_the_unit_file() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let other = home.path().join("other");
    fs::create_dir(&other).unwrap();
    let xdg = home.path().join("xdg");
    // The unit as `service install` writes it, for a service that keeps CLAUDE_CONFIG_DIR=other.
    Cmd::new(&home)
        .env("XDG_CONFIG_HOME", &xdg)
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "systemd")
        .env("CLAUDE_CONFIG_DIR", &other)
        .args(["service", "install"])
        .run()
        .expect_code(0);
    assert!(xdg.join("systemd/user/claude-tokend.service").is_file());
    let log = home.path().join("calls.log");
    let r = Report::run(
        doctor(&home, &["--json", "--offline"])
            .env("XDG_CONFIG_HOME", &xdg)
            .env("FAKE_NO_BUS", "1")
            .env("FAKE_LOG", &log),
    );
    r.out.expect_code(1);
    r.expect("keeper", "warn", "systemd could not be asked");
    r.expect("keeper", "warn", "Failed to connect to user scope bus");
    r.out.check(
        r.fix("keeper").contains("XDG_RUNTIME_DIR"),
        "it says what to do",
    );
    // The unit file says which login the service keeps: not the one Claude Code reads here.
    r.expect("claude-code-store", "fail", &other.display().to_string());
    check_eq("what systemd was asked", calls(&log), vec![SHOW.to_owned()]);
    // No systemctl at all.
    let empty = home.path().join("no-bin");
    fs::create_dir(&empty).unwrap();
    let r = Report::run(doctor(&home, &["--json", "--offline"]).env("PATH", &empty));
    r.expect("keeper", "warn", "there is no systemctl on PATH");
}

#[test]
fn launchd_is_asked_with_launchctl_print_and_its_agent_file_read() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    // SAFETY: getuid has no preconditions.
    let target = format!("gui/{}/io.github.claude-tokend", unsafe { libc::getuid() });
    let log = home.path().join("calls.log");
    let launchd = |extra: &[(&str, &Path)]| {
        let mut cmd = doctor(&home, &["--json", "--offline"])
            .env("CLAUDE_TOKEND_SERVICE_MANAGER", "launchd")
            .env("FAKE_LOG", &log);
        for (k, v) in extra {
            cmd = cmd.env(k, v);
        }
        Report::run(cmd)
    };
    // Not installed, not loaded, nothing running.
    let r = launchd(&[]);
    r.expect("keeper", "warn", "no claude-tokend daemon keeps this login");
    // Installed (the agent file `service install` writes) but not loaded.
    Cmd::new(&home)
        .env("CLAUDE_TOKEND_SERVICE_MANAGER", "launchd")
        .args(["service", "install"])
        .run()
        .expect_code(0);
    let agent = home
        .path()
        .join("Library/LaunchAgents/io.github.claude-tokend.plist");
    assert!(agent.is_file());
    let r = launchd(&[]);
    r.expect(
        "keeper",
        "warn",
        "the launchd agent io.github.claude-tokend is installed but not running",
    );
    r.out.check(
        r.fix("keeper").contains(&format!(
            "launchctl bootstrap gui/$(id -u) {}",
            agent.display()
        )),
        "it says how to load it",
    );
    r.expect("claude-code-store", "ok", "which the launchd agent");
    // Loaded and running: `launchctl print` names the pid, arguments and environment.
    let (d, pid) = daemon(&home, &server);
    let print = home.path().join("print.txt");
    fs::write(
        &print,
        format!(
            "{target} = {{\n\tactive count = 1\n\tpath = {}\n\tstate = running\n\n\targuments = \
             {{\n\t\t/usr/local/bin/claude-tokend\n\t}}\n\n\tenvironment = {{\n\t\tHOME => {}\n\t}}\n\n\tpid = {pid}\n}}\n",
            agent.display(),
            home.path().display()
        ),
    )
    .unwrap();
    let r = launchd(&[("FAKE_PRINT", &print)]);
    stop(d);
    r.out.expect_code(0);
    r.expect(
        "keeper",
        "ok",
        &format!("kept fresh by claude-tokend pid {pid}, the launchd agent io.github.claude-tokend (loaded, state = running)"),
    );
    let asked = calls(&log);
    check_eq(
        "what launchd was asked",
        asked
            .iter()
            .all(|c| *c == format!("launchctl print {target}")),
        true,
    );
    check_eq("how often", asked.len(), 3);
}
