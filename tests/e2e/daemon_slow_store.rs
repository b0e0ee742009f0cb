//! "A slow store never holds back another login or a signal" (CONTRACT.md, "Interrupted, slow or
//! absent"): a `security` run that hangs (a keychain waiting for a person to unlock it) runs
//! beside the daemon's event loop, never on it. Two logins, one in the (fake) Keychain and one in
//! a file: while every `security` run hangs, the file login's refresh goes out on time and
//! SIGTERM ends the daemon at once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::json;

/// The lead the daemon runs with: a login expiring in `LEAD + n` seconds is due in n seconds.
const LEAD_S: i64 = 10;

struct TwoLogins {
    home: TempHome,
    kc: FakeKeychain,
    /// Config directory of the Keychain login, and its item's service.
    item_dir: PathBuf,
    service: String,
    /// Config directory of the file login.
    file_dir: PathBuf,
}

impl TwoLogins {
    /// The Keychain login holds `in_item`, the file login `in_file`.
    fn new(in_item: &Login, in_file: &Login) -> TwoLogins {
        let home = TempHome::new();
        let kc = FakeKeychain::new(&home);
        let item_dir = home.path().join("work");
        let file_dir = home.path().join("personal");
        std::fs::create_dir(&item_dir).expect("mkdir");
        write_creds_at(&file_dir.join(".credentials.json"), &in_file.doc());
        let service = service_for(Some(item_dir.to_str().expect("an ASCII temp path")), None);
        kc.put(&service, TEST_USER, &in_item.doc());
        TwoLogins {
            home,
            kc,
            item_dir,
            service,
            file_dir,
        }
    }

    /// The daemon on both, `--store auto` deciding as on macOS (the item for the first, the
    /// file for the second).
    fn daemon(&self, server: &TokenServer) -> Running {
        self.kc
            .apply(Cmd::new(&self.home).server(server))
            .env("CLAUDE_TOKEND_TEST_AUTO_AS_MACOS", "1")
            .args(["--refresh-before", &format!("{LEAD_S}s")])
            .arg("--config-dir")
            .arg(&self.item_dir)
            .arg("--config-dir")
            .arg(&self.file_dir)
            .timeout(Duration::from_secs(90))
            .spawn()
    }

    /// `security` runs started and not finished.
    fn hanging(&self) -> usize {
        let log = self.kc.log();
        let started = log.iter().filter(|e| e[0] == "argv").count();
        let ended = log.iter().filter(|e| e[0] == "exit").count();
        started.saturating_sub(ended)
    }
}

/// When the file login's refresh is due (epoch ms).
fn due_at(login: &Login) -> i64 {
    login.expires_at - LEAD_S * 1000
}

/// Waits for the request with `token` and returns when (epoch ms) the server received it.
fn received(server: &TokenServer, token: &str, limit: Duration) -> Option<i64> {
    let find = || {
        server
            .requests()
            .iter()
            .find(|r| r.refresh_token() == Some(token))
            .map(|r| r.received_ms)
    };
    wait_until(limit, || find().is_some());
    find()
}

/// Stops the daemon and checks it ended with 0 within 2 s (a second, with room for a busy
/// machine).
fn stop_at_once(d: Running, hang: &TwoLogins) -> Out {
    let asked = Instant::now();
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    let took = asked.elapsed();
    hang.kc.hang(false);
    out.expect_code(0).check(
        took <= Duration::from_secs(2),
        format!("SIGTERM took {took:?} while `security` hung"),
    );
    out
}

#[test]
fn a_hung_keychain_read_holds_back_neither_another_login_nor_sigterm() {
    let in_item = Login::fresh();
    let in_file = Login::expiring_in(LEAD_S + 6);
    let s = TwoLogins::new(&in_item, &in_file);
    let server = TokenServer::for_login(&in_file);
    let d = s.daemon(&server);
    // Settled: both logins read, the watch armed.
    std::thread::sleep(Duration::from_millis(2000));
    // From now on `security` hangs; Claude Code writes the item (an MCP token), so the daemon
    // reads it again.
    s.kc.hang(true);
    let mut doc = in_item.doc();
    doc["mcpOAuth"] = json!({"github": {"accessToken": "mcp-rotated"}});
    s.kc.put(&s.service, TEST_USER, &doc);
    let due = due_at(&in_file);
    let got = received(&server, &in_file.refresh, Duration::from_secs(12));
    let hanging = s.hanging();
    let out = stop_at_once(d, &s);
    out.check(
        hanging >= 1,
        "no `security` run was hanging: the test did not test",
    )
    .check(got.is_some(), "the file login was never refreshed");
    if let Some(at) = got {
        out.check(
            at - due <= 1500,
            format!(
                "the file login's refresh went out {} ms after it was due",
                at - due
            ),
        );
    }
}

#[test]
fn a_keychain_login_whose_refresh_hangs_in_security_holds_back_nobody() {
    // Both are due soon; the item's refresh starts first and hangs reading the item.
    let in_item = Login::expiring_in(LEAD_S + 3);
    let in_file = Login::expiring_in(LEAD_S + 6);
    let s = TwoLogins::new(&in_item, &in_file);
    let server = TokenServer::for_login(&in_file);
    server.accept_refresh(&in_item.refresh);
    let d = s.daemon(&server);
    std::thread::sleep(Duration::from_millis(1500));
    s.kc.hang(true);
    let due = due_at(&in_file);
    let got = received(&server, &in_file.refresh, Duration::from_secs(12));
    let hanging = s.hanging();
    let out = stop_at_once(d, &s);
    out.check(
        hanging >= 1,
        "no `security` run was hanging: the test did not test",
    )
    .check(got.is_some(), "the file login was never refreshed")
    .check(
        received(&server, &in_item.refresh, Duration::ZERO).is_none(),
        "the item's refresh was sent although reading the item hung",
    );
    if let Some(at) = got {
        out.check(
            at - due <= 1500,
            format!(
                "the file login's refresh went out {} ms after it was due",
                at - due
            ),
        );
    }
}

#[test]
fn the_fake_security_hangs_while_asked_to() {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.hang(true);
    let mut child = kc
        .security()
        .args(["find-generic-password", "-s", "x", "-a", "y"])
        .spawn()
        .expect("running the fake");
    std::thread::sleep(Duration::from_millis(500));
    let still = child.try_wait().expect("try_wait").is_none();
    kc.hang(false);
    let ended = wait_until(Duration::from_secs(5), || {
        child.try_wait().expect("try_wait").is_some()
    });
    assert!(still, "it did not hang");
    assert!(ended, "it did not go on once the hang was lifted");
    assert_eq!(
        child.wait().unwrap().code(),
        Some(44),
        "then it ran the command"
    );
}

#[test]
fn sigterm_with_an_answer_whose_save_hangs_gives_up_after_10_s_saying_so() {
    // The item's refresh is due at once; its answer takes a second, and meanwhile `security`
    // starts to hang: the save of the new tokens cannot finish.
    let in_item = Login::expiring_in(LEAD_S - 60);
    let in_file = Login::fresh();
    let s = TwoLogins::new(&in_item, &in_file);
    let server = TokenServer::for_login(&in_item);
    server.set_delay(Duration::from_millis(1000));
    let d = s.daemon(&server);
    assert!(
        received(&server, &in_item.refresh, Duration::from_secs(10)).is_some(),
        "the item's refresh went out"
    );
    s.kc.hang(true);
    let asked = Instant::now();
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    let took = asked.elapsed();
    s.kc.hang(false);
    out.expect_code(1)
        .check(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(14),
            format!("stopping took {took:?}: the answer's save has 10 s, then the daemon gives up"),
        )
        .check(
            out.stderr.contains("may be lost"),
            "the error says the login may be lost",
        )
        .check_eq("requests", server.count(), 1);
}
