//! The daemon (`claude-tokend` with no command), run as a real process against the loopback
//! endpoint: scheduling, watching outside writes, failures, signals and systemd notifications.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

/// A short lead so tests can make a token due within seconds (a lead under 5 minutes is
/// accepted with a warning).
const LEAD: &str = "10s";

/// Generous bounds: CI machines are shared and slow; a passing run takes a fraction of these.
const SOON: Duration = Duration::from_secs(15);

/// A login whose access token is due (under a 10 s lead) `secs` seconds from now.
fn due_in(secs: i64) -> Login {
    Login::expiring_in(10 + secs)
}

fn daemon(home: &TempHome, server: &TokenServer) -> Cmd {
    Cmd::new(home)
        .server(server)
        .args(["--refresh-before", LEAD])
        .timeout(Duration::from_secs(120))
}

/// The access token the server issued last, once it has issued one.
fn issued_access(server: &TokenServer) -> Option<String> {
    server.issued().last().map(|i| i.access.clone())
}

/// True once the file holds the access token the server issued last.
fn saved_latest(home: &TempHome, server: &TokenServer) -> bool {
    issued_access(server).is_some_and(|a| a == access_token(home))
}

fn access_token(home: &TempHome) -> String {
    home.read_creds()["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn refreshes_at_the_due_time_and_not_again_after_its_own_write() {
    let home = TempHome::new();
    let login = due_in(3);
    let doc = login.doc();
    home.write_creds(&doc);
    let server = TokenServer::for_login(&login);
    let started = Instant::now();
    let d = daemon(&home, &server).spawn();

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.count(), 0, "nothing is sent before the due time");
    assert!(
        wait_until(SOON, || server.count() == 1),
        "refreshed when due"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "not early: {waited:?}"
    );
    assert!(
        wait_until(SOON, || saved_latest(&home, &server)),
        "the new token is written"
    );
    let after = home.read_creds();
    check_eq(
        "unknown keys kept",
        without_owned(&after),
        without_owned(&doc),
    );
    // Its own write must not look like news and trigger another refresh.
    std::thread::sleep(Duration::from_millis(1500));
    let out = stop(d);
    out.check_eq("requests", server.count(), 1);
    out.check_eq(
        "the refresh token sent",
        server.requests()[0].refresh_token(),
        Some(login.refresh.as_str()),
    );
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
    out.expect_no_secret(&login.secrets());
}

#[test]
fn an_outside_write_of_a_far_off_token_sends_nothing() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    replace_atomically(&home.creds_path(), &Login::fresh().doc());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(is_running(&d));
    let out = stop(d);
    out.check_eq("requests", server.count(), 0);
}

#[test]
fn an_outside_write_of_a_due_token_is_refreshed_with_the_new_refresh_token() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    let newer = due_in(-1);
    server.accept_refresh(&newer.refresh);
    replace_atomically(&home.creds_path(), &newer.doc());
    assert!(
        wait_until(SOON, || server.count() >= 1),
        "the new file is picked up"
    );
    let out = stop(d);
    out.check_eq("requests", server.count(), 1);
    out.check_eq(
        "refreshed with the refresh token from the new file",
        server.requests()[0].refresh_token(),
        Some(newer.refresh.as_str()),
    );
    out.check_eq("written", access_token(&home), server.last_issued().access);
}

#[test]
fn an_in_place_rewrite_is_seen_too() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    let newer = due_in(-1);
    server.accept_refresh(&newer.refresh);
    // Older Claude Code rewrites the file in place (open with truncate, write).
    home.write_creds(&newer.doc());
    assert!(
        wait_until(SOON, || server.count() >= 1),
        "the rewrite is picked up"
    );
    stop(d).check_eq("requests", server.count(), 1);
}

#[test]
fn a_missing_file_that_appears_later_is_refreshed() {
    for make_dir_first in [true, false] {
        let home = TempHome::new();
        if make_dir_first {
            std::fs::create_dir(home.claude_dir()).unwrap();
        }
        let server = TokenServer::start();
        let d = daemon(&home, &server).spawn();
        std::thread::sleep(Duration::from_millis(700));
        assert!(is_running(&d), "a missing file does not stop the daemon");
        let login = due_in(-1);
        server.accept_refresh(&login.refresh);
        home.write_creds(&login.doc());
        assert!(
            wait_until(SOON, || server.count() >= 1),
            "refreshed once the file appeared (directory existed first: {make_dir_first})"
        );
        let out = stop(d);
        out.check_eq("requests", server.count(), 1);
        out.expect_stderr_contains("waiting for");
    }
}

#[test]
fn a_half_written_file_then_a_complete_one_is_handled() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    let before = b"{\"claudeAiOauth\": {\"accessToken\": \"sk-ant-oat01-abc".to_vec();
    home.write_raw(&before);
    std::thread::sleep(Duration::from_millis(2000));
    assert!(is_running(&d), "a malformed file does not stop the daemon");
    assert_eq!(
        home.raw_bytes(),
        before,
        "a malformed file is never rewritten"
    );
    let login = due_in(-1);
    server.accept_refresh(&login.refresh);
    home.write_creds(&login.doc());
    assert!(
        wait_until(SOON, || server.count() >= 1),
        "the fixed file is refreshed"
    );
    stop(d).check_eq("requests", server.count(), 1);
}

#[test]
fn invalid_grant_stops_requests_until_a_new_login_arrives() {
    let home = TempHome::new();
    let spent = due_in(-1);
    home.write_creds(&spent.doc());
    // The server knows no refresh token: every refresh is refused.
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    assert!(wait_until(SOON, || server.count() >= 1));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(is_running(&d), "a refused grant does not stop the daemon");
    let refused = server.count();
    assert!(
        refused <= 2,
        "at most a few requests after a refusal, got {refused}"
    );

    let login = due_in(-1);
    server.accept_refresh(&login.refresh);
    replace_atomically(&home.creds_path(), &login.doc());
    assert!(
        wait_until(SOON, || access_token(&home)
            == server
                .issued()
                .last()
                .map(|i| i.access.clone())
                .unwrap_or_default()),
        "recovers by itself after a new login"
    );
    let out = stop(d);
    out.check_eq(
        "the last request used the new login",
        server
            .requests()
            .last()
            .and_then(|r| r.refresh_token().map(str::to_owned)),
        Some(login.refresh.clone()),
    );
    out.expect_stderr_contains("claude-tokend login");
}

#[test]
fn sigusr1_forces_a_refresh_and_sighup_keeps_it_running() {
    let home = TempHome::new();
    let login = Login::fresh();
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    send_signal(&d, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_running(&d),
        "SIGHUP re-reads; it does not stop the daemon"
    );
    assert_eq!(
        server.count(),
        0,
        "a fresh token is not refreshed on SIGHUP"
    );
    send_signal(&d, libc::SIGUSR1);
    assert!(
        wait_until(SOON, || server.count() == 1),
        "SIGUSR1 refreshes now"
    );
    assert!(wait_until(SOON, || saved_latest(&home, &server)));
    let out = stop(d);
    out.check_eq("requests", server.count(), 1);
}

#[test]
fn sigterm_exits_0_within_a_second_with_no_stray_files() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let d = daemon(&home, &server).spawn();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    out.expect_code(0);
    out.check(
        t.elapsed() < Duration::from_secs(1),
        format!("stopped in {:?}", t.elapsed()),
    );
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn sigterm_during_a_request_waits_for_the_answer_and_saves_it() {
    let home = TempHome::new();
    let login = due_in(-1);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.set_delay(Duration::from_millis(1500));
    let d = daemon(&home, &server).spawn();
    assert!(
        wait_until(SOON, || server.count() == 1),
        "the request went out"
    );
    send_signal(&d, libc::SIGTERM);
    let out = d.wait();
    out.expect_code(0);
    out.check_eq(
        "the answer to the request in flight was saved before exiting",
        access_token(&home),
        server.last_issued().access,
    );
    out.expect_only_files(&home.claude_dir(), &allowed_siblings(".credentials.json"));
}

#[test]
fn transient_failures_back_off_and_then_succeed() {
    let home = TempHome::new();
    let login = due_in(-1);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    server.push(Reply::error(503));
    server.push(Reply::error(429).header("Retry-After", "1"));
    let d = daemon(&home, &server).spawn();
    assert!(
        wait_until(SOON, || server.count() == 3),
        "retried after 503 and 429"
    );
    assert!(wait_until(SOON, || saved_latest(&home, &server)));
    let requests = server.requests();
    let gap = requests[2].received_ms - requests[1].received_ms;
    assert!(gap >= 950, "Retry-After: 1 was honoured (gap {gap} ms)");
    let out = stop(d);
    out.expect_stderr_contains("backing off");
}

#[test]
fn systemd_notifications_arrive_on_notify_socket() {
    let home = TempHome::new();
    home.write_creds(&Login::fresh().doc());
    let server = TokenServer::start();
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = daemon(&home, &server)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    let mut seen = String::new();
    let deadline = Instant::now() + SOON;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && !(seen.contains("READY=1") && seen.contains("STATUS=") && seen.contains("WATCHDOG=1"))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    let out = stop(d);
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for want in [
        "READY=1",
        "STATUS=next refresh at",
        "WATCHDOG=1",
        "STOPPING=1",
    ] {
        out.check(seen.contains(want), format!("{want} in {seen:?}"));
    }
}

#[test]
fn no_token_in_the_output_at_trace_level() {
    let home = TempHome::new();
    let login = due_in(-1);
    home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let d = daemon(&home, &server).env("RUST_LOG", "trace").spawn();
    assert!(wait_until(SOON, || saved_latest(&home, &server)));
    let out = stop(d);
    let issued = server.last_issued();
    let mut secrets = login.secrets();
    secrets.push(issued.access.clone());
    secrets.extend(issued.refresh.clone());
    out.expect_no_secret(&secrets);
    for s in &secrets {
        out.expect_masked(s);
    }
    out.check(out.stderr.contains("TRACE"), "trace logging was on");
}
