//! Telling the user before a login dies (CONTRACT.md "Telling the user before a login dies"):
//! the daemon's `--notify-cmd`, run with `sh -c` and the event in `CLAUDE_TOKEND_*` variables.
//! The command here writes its environment to a file per event, and the tests read them back:
//! which events, in what order, with what deadline, and never a token. The debug build's
//! `CLAUDE_TOKEND_TEST_HOUR_MS` shortens the hours of the timing rules (12 h, a day, 30 min).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;
use serde_json::json;

const SOON: Duration = Duration::from_secs(20);

/// One event as the command saw it: its `CLAUDE_TOKEND_*` variables.
type Event = BTreeMap<String, String>;

/// A directory the notify command writes one file per event into, named by the time in ns.
struct Inbox {
    dir: PathBuf,
}

impl Inbox {
    fn new(home: &TempHome) -> Inbox {
        let dir = home.path().join("inbox");
        std::fs::create_dir(&dir).expect("mkdir inbox");
        Inbox { dir }
    }

    /// Writes each event whole under a temporary name, then renames it into place, so a test
    /// never reads one half-written.
    fn command(&self) -> String {
        let dir = self.dir.display();
        format!(
            "env | grep '^CLAUDE_TOKEND_' > '{dir}/.part.'$$ && mv '{dir}/.part.'$$ '{dir}/'$(date +%s%N).env"
        )
    }

    fn events(&self) -> Vec<Event> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("read inbox")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "env"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .expect("read event")
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e.get("CLAUDE_TOKEND_EVENT").cloned().unwrap_or_default())
            .collect()
    }

    /// Every byte every event saw, for leak checks.
    fn all_text(&self) -> String {
        self.events()
            .iter()
            .flat_map(|e| e.iter().map(|(k, v)| format!("{k}={v}\n")))
            .collect()
    }
}

fn daemon(home: &TempHome, server: &TokenServer, inbox: &Inbox, hour_ms: u64) -> Running {
    Cmd::new(home)
        .server(server)
        .args(["--refresh-before", "10s", "--notify-cmd", &inbox.command()])
        .env("CLAUDE_TOKEND_TEST_HOUR_MS", hour_ms.to_string())
        .timeout(Duration::from_secs(120))
        .spawn()
}

fn rfc3339(ms: i64) -> String {
    // The same form the daemon uses: UTC, whole seconds (rounded down), `Z`.
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", ms / 1000),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write_doc(path: &Path, doc: &serde_json::Value) {
    replace_atomically(path, doc);
}

#[test]
fn a_refused_login_is_told_repeated_every_12_hours_and_recovered_once_a_new_login_arrives() {
    let home = TempHome::new();
    let dead = Login::expiring_in(5);
    home.write_creds(&dead.doc());
    let server = TokenServer::start(); // knows no refresh token: invalid_grant
    let inbox = Inbox::new(&home);
    // An "hour" of 300 ms: 12 hours last 3.6 s.
    let d = daemon(&home, &server, &inbox, 300);
    assert!(
        wait_until(SOON, || inbox.names().len() == 1),
        "login-needed told"
    );
    let first = &inbox.events()[0];
    assert_eq!(first["CLAUDE_TOKEND_EVENT"], "login-needed");
    assert_eq!(
        first["CLAUDE_TOKEND_LOGIN"],
        home.creds_path().display().to_string()
    );
    assert!(!first["CLAUDE_TOKEND_MESSAGE"].is_empty());
    assert!(!first.contains_key("CLAUDE_TOKEND_DEADLINE"), "{first:?}");
    // Repeated while it lasts, not before 12 "hours".
    let told = Instant::now();
    assert!(wait_until(SOON, || inbox.names().len() == 2), "repeated");
    assert!(
        told.elapsed() >= Duration::from_millis(3000),
        "repeated too soon: {:?}",
        told.elapsed()
    );
    // A new login (the user signed in again): recovered, once.
    let fresh = Login::fresh();
    write_doc(&home.creds_path(), &fresh.doc());
    assert!(
        wait_until(SOON, || inbox.names().last().map(String::as_str)
            == Some("recovered")),
        "{:?}",
        inbox.names()
    );
    std::thread::sleep(Duration::from_secs(5));
    let out = stop(d);
    let names = inbox.names();
    out.check_eq(
        "events",
        names,
        ["login-needed", "login-needed", "recovered"]
            .map(String::from)
            .to_vec(),
    );
    out.check_eq("one request for the dead token", server.count(), 1);
    for t in dead.secrets().iter().chain(fresh.secrets().iter()) {
        out.check(
            !inbox.all_text().contains(t.as_str()),
            "no token in any event",
        );
    }
}

#[test]
fn refresh_failing_after_30_minutes_of_failures_with_the_tokens_expiry_then_recovered() {
    let home = TempHome::new();
    let login = Login::expiring_in(600);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    for _ in 0..3 {
        server.push(Reply::error(503));
    }
    let inbox = Inbox::new(&home);
    // An "hour" of 400 ms: 30 minutes last 200 ms. The lead makes the token due at once.
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "15m", "--notify-cmd", &inbox.command()])
        .env("CLAUDE_TOKEND_TEST_HOUR_MS", "400")
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        wait_until(Duration::from_secs(40), || inbox
            .names()
            .contains(&"recovered".to_owned())),
        "{:?}",
        inbox.names()
    );
    let out = stop(d);
    out.check_eq(
        "events",
        inbox.names(),
        ["refresh-failing", "recovered"].map(String::from).to_vec(),
    );
    let failing = &inbox.events()[0];
    out.check_eq(
        "the deadline of refresh-failing is the token's expiry",
        failing.get("CLAUDE_TOKEND_DEADLINE").cloned(),
        Some(rfc3339(login.expires_at)),
    )
    .check_eq("requests", server.count(), 4);
}

#[test]
fn login_expiring_from_three_days_before_with_its_deadline_and_not_repeated_by_a_change() {
    let home = TempHome::new();
    let login = Login::fresh();
    let ends = now_ms() + 2 * 86_400_000;
    let mut doc = login.doc();
    doc["claudeAiOauth"]["refreshTokenExpiresAt"] = json!(ends);
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    // A real hour: a day does not pass during the test.
    let d = daemon(&home, &server, &inbox, 3_600_000);
    assert!(
        wait_until(SOON, || inbox.names().len() == 1),
        "told at start"
    );
    let e = &inbox.events()[0];
    assert_eq!(e["CLAUDE_TOKEND_EVENT"], "login-expiring");
    assert_eq!(e["CLAUDE_TOKEND_DEADLINE"], rfc3339(ends));
    // SIGHUP and an unrelated change of the file do not repeat it.
    send_signal(&d, libc::SIGHUP);
    doc["mcpOAuth"] = json!({"server": {"accessToken": "x"}});
    write_doc(&home.creds_path(), &doc);
    std::thread::sleep(Duration::from_secs(3));
    let out = stop(d);
    out.check_eq("events", inbox.names(), vec!["login-expiring".to_owned()]);
}

#[test]
fn a_logout_is_told_once() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    let d = daemon(&home, &server, &inbox, 100);
    std::thread::sleep(Duration::from_secs(1));
    let mut doc = login.doc();
    doc.as_object_mut().unwrap().remove("claudeAiOauth");
    write_doc(&home.creds_path(), &doc);
    assert!(wait_until(SOON, || inbox.names().len() == 1), "told");
    // 12 "hours" are 1.2 s: a removal is still not repeated.
    std::thread::sleep(Duration::from_secs(4));
    let out = stop(d);
    out.check_eq("events", inbox.names(), vec!["login-needed".to_owned()]);
    let e = &inbox.events()[0];
    out.check(
        e["CLAUDE_TOKEND_MESSAGE"].contains("removed"),
        format!("the message says why: {e:?}"),
    );
}

#[test]
fn a_failing_or_slow_command_never_holds_the_daemon_up_and_is_logged_once() {
    let home = TempHome::new();
    let dead = Login::expiring_in(5);
    home.write_creds(&dead.doc());
    let server = TokenServer::start();
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s", "--notify-cmd", "sleep 1; exit 3"])
        .env("CLAUDE_TOKEND_TEST_HOUR_MS", "100")
        .timeout(Duration::from_secs(60))
        .spawn();
    // Told at once and then every 1.2 s; every run fails after a second.
    std::thread::sleep(Duration::from_secs(5));
    let stopping = Instant::now();
    let out = stop(d);
    out.check(
        stopping.elapsed() < Duration::from_secs(2),
        format!("stopped in {:?}", stopping.elapsed()),
    );
    out.check_eq(
        "the failure is logged once",
        out.stderr.matches("--notify-cmd for login-needed").count(),
        1,
    );
    // A command that outlives the daemon does not keep it from stopping either.
    let home = TempHome::new();
    home.write_creds(&dead.doc());
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s", "--notify-cmd", "sleep 30"])
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(
        wait_until(SOON, || server.count() >= 2),
        "the dead token was tried"
    );
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    stop(d);
    assert!(stopping.elapsed() < Duration::from_secs(2));
}

#[test]
fn notify_desktop_runs_notify_send_when_it_is_installed() {
    let home = TempHome::new();
    let dead = Login::expiring_in(5);
    home.write_creds(&dead.doc());
    let server = TokenServer::start();
    // A fake notify-send first on PATH that records its arguments.
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    let record = home.path().join("notify-send.args");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
        record.display()
    );
    let fake = bin.join("notify-send");
    std::fs::write(&fake, script).expect("write fake notify-send");
    std::fs::set_permissions(
        &fake,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Cmd::new(&home)
        .server(&server)
        .env("PATH", &path)
        .args(["--refresh-before", "10s", "--notify", "desktop"])
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(wait_until(SOON, || record.exists()), "notify-send was run");
    let out = stop(d);
    let args = std::fs::read_to_string(&record).unwrap();
    out.check(
        args.contains("claude-tokend: login-needed"),
        format!("the title names the event: {args}"),
    );
    for t in dead.secrets() {
        out.check(!args.contains(&t), "no token in the notification");
    }
}

#[test]
fn one_failure_then_a_new_login_from_the_user_tells_nothing() {
    let home = TempHome::new();
    let login = Login::expiring_in(600);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    // Not retried within the test: only the new login can end the failure.
    server.push(Reply::error(503).header("Retry-After", "30"));
    let inbox = Inbox::new(&home);
    // An "hour" of 6 s: refresh-failing would be due 3 s after the failure.
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "15m", "--notify-cmd", &inbox.command()])
        .env("CLAUDE_TOKEND_TEST_HOUR_MS", "6000")
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(wait_until(SOON, || server.count() == 1), "the first try");
    // The user signs in again at once: a new login, not due, works without any refresh.
    let fresh = Login::fresh();
    write_doc(&home.creds_path(), &fresh.doc());
    std::thread::sleep(Duration::from_secs(6));
    let out = stop(d);
    out.check_eq("events", inbox.names(), Vec::<String>::new())
        .check_eq("requests", server.count(), 1);
}

#[test]
fn login_expiring_is_told_for_each_new_deadline_a_change_brings_and_not_again_on_sighup() {
    let home = TempHome::new();
    let login = Login::fresh();
    let mut doc = login.doc();
    doc["claudeAiOauth"]["refreshTokenExpiresAt"] = json!(now_ms() + 10 * 86_400_000);
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let inbox = Inbox::new(&home);
    let d = daemon(&home, &server, &inbox, 3_600_000);
    std::thread::sleep(Duration::from_millis(1500));
    let at_start = inbox.names();
    // The login's end moves into the 3-day window (nothing else of the login changes).
    let ends = now_ms() + 2 * 86_400_000;
    doc["claudeAiOauth"]["refreshTokenExpiresAt"] = json!(ends);
    write_doc(&home.creds_path(), &doc);
    let told = wait_until(SOON, || inbox.names().len() == 1);
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    let out = stop(d);
    out.check_eq("events at start", at_start, Vec::<String>::new())
        .check(told, "the new deadline was not told")
        .check_eq("events", inbox.names(), vec!["login-expiring".to_owned()]);
    let e = &inbox.events()[0];
    out.check_eq(
        "deadline",
        e.get("CLAUDE_TOKEND_DEADLINE").cloned(),
        Some(rfc3339(ends)),
    );
}

/// A refused login whose file is rewritten with only its expiry changed (the same refresh token)
/// is not "back": no `recovered`, and the refused token is not sent again. Found by the hostile
/// review (it sent `recovered`, then `login-needed` again).
#[test]
fn a_refused_login_with_only_its_expiry_rewritten_is_not_recovered() {
    let home = TempHome::new();
    // Due at once with the daemon's 10 s lead.
    let login = Login::expiring_in(5);
    let mut doc = login.doc();
    home.write_creds(&doc);
    // A server that knows no token: the refresh is refused.
    let server = TokenServer::start();
    let inbox = Inbox::new(&home);
    let d = daemon(&home, &server, &inbox, 3_600_000);
    assert!(
        wait_until(SOON, || inbox.names().contains(&"login-needed".to_owned())),
        "login-needed after the refusal"
    );
    doc["claudeAiOauth"]["expiresAt"] = json!(now_ms() + 3_600_000);
    write_doc(&home.creds_path(), &doc);
    std::thread::sleep(Duration::from_secs(3));
    let out = stop(d);
    out.check_eq("events", inbox.names(), vec!["login-needed".to_owned()])
        .check_eq("requests", server.count(), 1);
}
