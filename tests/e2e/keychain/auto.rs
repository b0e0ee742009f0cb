//! `--store auto` as it decides on macOS (CONTRACT.md "Stores"), tested on Linux through the
//! debug-only seam `CLAUDE_TOKEND_TEST_AUTO_AS_MACOS=1`: the Keychain item when it exists, else
//! the file when it exists, else the Keychain; a locked keychain is a Keychain failure and never
//! a reason to use the file; and with neither store, the daemon waits for either.

use std::time::Duration;

use claude_tokend_e2e::*;

use super::*;

/// The binary with the fake on PATH, deciding `auto` as on macOS (no `--store`: auto is the
/// default).
fn auto(s: &Setup, server: &TokenServer, args: &[&str]) -> Cmd {
    s.kc.apply(Cmd::new(&s.home).server(server))
        .env("CLAUDE_TOKEND_TEST_AUTO_AS_MACOS", "1")
        .args(args)
}

#[test]
fn the_item_wins_over_a_file_when_it_exists() {
    let (in_item, in_file) = (Login::due(), Login::due());
    let before = item_doc(&in_item);
    let s = Setup::with(&before);
    s.home.write_creds(&in_file.doc());
    let file_before = s.home.state();
    let server = TokenServer::for_login(&in_item);
    let out = auto(&s, &server, &["--once"]).run();
    out.expect_code(0)
        .expect_silent()
        .check_eq(
            "the item's refresh token was sent",
            server.requests()[0].refresh_token(),
            Some(in_item.refresh.as_str()),
        )
        .check_eq("requests", server.count(), 1)
        .expect_untouched(&s.home.creds_path(), &file_before);
    check_refreshed(&out, &s, &server, &before);
}

#[test]
fn the_file_is_used_when_there_is_no_item() {
    let login = Login::due();
    let s = Setup::empty();
    s.home.write_creds(&login.doc());
    let server = TokenServer::for_login(&login);
    let out = auto(&s, &server, &["--once"]).run();
    out.expect_code(0)
        .check_eq("requests", server.count(), 1)
        .check_eq("no item was written", s.kc.writes().len(), 0)
        .check_eq(
            "the file holds the new token",
            oauth(&s.home.read_creds()).get("accessToken"),
            Some(&serde_json::json!(server.last_issued().access)),
        );
}

#[test]
fn with_neither_store_the_keychain_is_the_one_named() {
    let s = Setup::empty();
    let server = TokenServer::start();
    let out = auto(&s, &server, &["status"]).run();
    out.expect_code(78)
        .expect_stderr_contains("Keychain")
        .expect_stderr_contains(&s.service);
}

#[test]
fn a_locked_keychain_is_a_keychain_failure_not_a_reason_to_use_the_file() {
    let login = Login::due();
    let s = Setup::empty();
    s.home.write_creds(&login.doc());
    let before = s.home.state();
    s.kc.lock();
    let server = TokenServer::for_login(&login);
    let out = auto(&s, &server, &["--once", "--retry-budget", "2s"]).run();
    out.expect_code(75)
        .expect_stderr_contains("security unlock-keychain")
        .check_eq("requests", server.count(), 0)
        .expect_untouched(&s.home.creds_path(), &before);
}

#[test]
fn the_daemon_with_neither_store_waits_for_either_and_takes_the_file_that_appears() {
    let s = Setup::empty();
    let login = Login::expiring_in(10 + 1);
    let server = TokenServer::for_login(&login);
    let d = auto(&s, &server, &["--refresh-before", "10s"])
        .timeout(Duration::from_secs(120))
        .spawn();
    std::thread::sleep(Duration::from_millis(1500));
    s.home.write_creds(&login.doc());
    assert!(
        wait_until(SOON, || server.count() == 1),
        "the file that appeared was refreshed"
    );
    assert!(wait_until(SOON, || {
        oauth(&s.home.read_creds()).get("accessToken")
            == Some(&serde_json::json!(server.last_issued().access))
    }));
    let out = stop(d);
    out.check_eq("no item was written", s.kc.writes().len(), 0)
        .expect_no_secret(&login.secrets());
}
