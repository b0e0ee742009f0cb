//! "Before the first login" (CONTRACT.md, "Interrupted, slow or absent"): with no config
//! directory yet, the daemon watches the nearest existing ancestor (here HOME), and only a change
//! on the path to the missing directory wakes it. Its own log file in HOME, a shell's history
//! and the like cause no log line, no store read and no `security` run; what it waits for is
//! logged once. And it still picks up the login when `.claude/.credentials.json` appears.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claude_tokend_e2e::keychain::FakeKeychain;
use claude_tokend_e2e::*;

const SOON: Duration = Duration::from_secs(15);

/// The daemon as `nohup claude-tokend &` from HOME runs it: stderr appended to a file in HOME
/// (which the daemon then sees change with every line it logs).
struct Logging {
    child: Child,
    log: std::path::PathBuf,
}

impl Logging {
    fn start(
        home: &TempHome,
        server: &TokenServer,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&std::ffi::OsStr],
    ) -> Logging {
        let log = home.path().join("nohup.out");
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating the log file");
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CLAUDE_TOKEND_TOKEN_URL", server.url())
            .args(["--refresh-before", "10s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting the daemon");
        Logging { child, log }
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lines(&self) -> usize {
        self.text().lines().count()
    }

    /// SIGTERM; the exit code and how long stopping took (killed after 10 s).
    fn stop(mut self) -> (Option<i32>, Duration, String) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let asked = Instant::now();
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the daemon") {
                break status.code();
            }
            if asked.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (code, asked.elapsed(), self.text())
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 200 separate appends to a file in HOME over about a second, as a busy shell makes them.
fn busy_home(home: &Path) {
    let history = home.join(".bash_history");
    for i in 0..200 {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&history)
            .expect("history");
        writeln!(f, "echo {i}").expect("append");
        drop(f);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn before_the_first_login_its_own_log_and_a_busy_home_wake_nothing() {
    let home = TempHome::new();
    let login = Login::expiring_in(10 + 2);
    let server = TokenServer::for_login(&login);
    let d = Logging::start(&home, &server, &[], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let at_start = d.lines();
    busy_home(home.path());
    std::thread::sleep(Duration::from_millis(500));
    let after_burst = d.lines();
    // The login appears: the daemon notices and refreshes it when due.
    home.write_creds(&login.doc());
    let refreshed = wait_until(SOON, || server.count() == 1);
    let (code, _, log) = d.stop();
    let say = |what: &str| format!("{what}\n--- log ---\n{log}");
    assert!(
        at_start <= 4,
        "{}",
        say(&format!("{at_start} log lines in the first 1.5 s"))
    );
    assert_eq!(
        after_burst,
        at_start,
        "{}",
        say("a busy HOME made the daemon log")
    );
    assert_eq!(
        log.matches("waiting for a credentials directory").count(),
        1,
        "{}",
        say("what it waits for is logged once")
    );
    assert!(
        refreshed,
        "{}",
        say("the login that appeared was not refreshed")
    );
    assert_eq!(code, Some(0), "{}", say("exit code"));
}

#[test]
fn before_the_first_login_a_busy_home_runs_no_security() {
    // Two logins, `--store auto` deciding as on macOS: one in the Keychain (its item exists),
    // and a file in `.claude`, which does not exist yet.
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    let work = home.path().join("work");
    fs::create_dir(&work).expect("mkdir");
    let service = keychain::service_for(Some(work.to_str().expect("ASCII")), None);
    kc.put(&service, keychain::TEST_USER, &Login::fresh().doc());
    let login = Login::expiring_in(10 + 2);
    let server = TokenServer::for_login(&login);
    let path = kc.path_env();
    let log = home.path().join(".fake-security").join("log");
    let env: [(&str, &std::ffi::OsStr); 5] = [
        ("PATH", path.as_os_str()),
        ("FAKE_SECURITY_DB", kc.db_path().as_os_str()),
        ("FAKE_SECURITY_LOG", log.as_os_str()),
        ("USER", std::ffi::OsStr::new(keychain::TEST_USER)),
        (
            "CLAUDE_TOKEND_TEST_AUTO_AS_MACOS",
            std::ffi::OsStr::new("1"),
        ),
    ];
    let d = Logging::start(
        &home,
        &server,
        &env,
        &[
            "--config-dir".as_ref(),
            work.as_os_str(),
            "--credentials".as_ref(),
            home.creds_path().as_os_str(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let at_start = kc.invocations();
    busy_home(home.path());
    std::thread::sleep(Duration::from_millis(500));
    let during = kc.invocations() - at_start;
    home.write_creds(&login.doc());
    let refreshed = wait_until(SOON, || server.count() == 1);
    let (code, _, log) = d.stop();
    let say = |what: &str| format!("{what}\n--- log ---\n{log}");
    assert_eq!(during, 0, "{}", say("`security` runs while HOME was busy"));
    assert!(
        refreshed,
        "{}",
        say("the file that appeared was not refreshed")
    );
    assert_eq!(code, Some(0), "{}", say("exit code"));
}
