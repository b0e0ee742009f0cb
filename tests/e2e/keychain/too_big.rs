//! "The Keychain: check before spending" (CONTRACT.md, "Interrupted, slow or absent"): an item
//! too big for `security` (past the `-i` line it goes in argv, and one argument over the
//! kernel's limit, 128 KiB on Linux, fails with E2BIG) is refused before any request: `--once`
//! exits 78 naming the item, its size and what to do; the daemon waits for the item to change.
//! The fake `security` is a real process, so the E2BIG is real here too. Also: a Keychain save
//! that fails is not blamed on disk space.

use std::time::Duration;

use claude_tokend_e2e::*;
use serde_json::{Value, json};

use super::*;

/// A due login's item carrying an MCP server entry of `pad` bytes.
fn padded(login: &Login, pad: usize) -> Value {
    let mut doc = item_doc(login);
    doc["mcpOAuth"]["big|0000000000"] = json!({"serverName": "big", "blob": "m".repeat(pad)});
    doc
}

/// 100 KB of JSON: 200 KB of hex, past Linux's 128 KiB for one argument.
const TOO_BIG: usize = 100_000;
/// 50 KB of JSON: 100 KB of hex, which `security` takes as an argument.
const BIG_BUT_FINE: usize = 50_000;

#[test]
fn once_refuses_an_item_too_big_for_security_before_spending_the_token() {
    let login = Login::due();
    let doc = padded(&login, TOO_BIG);
    let s = Setup::with(&doc);
    let before = s.raw();
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).args(["--retry-budget", "3s"]).run();
    let size = before.as_ref().map_or(0, Vec::len);
    out.check_eq("requests (nothing spent)", server.count(), 0)
        .expect_code(78)
        .expect_stderr_contains(&s.service)
        .expect_stderr_contains(&format!("{size} bytes"))
        .expect_stderr_contains("MCP")
        .expect_stderr_contains("--store file")
        .check(!out.stderr.contains("disk space"), "disk space is blamed")
        .check_eq("the item", s.raw(), before)
        .check_eq("writes", s.kc.writes().len(), 0);
    expect_no_file_and_no_lock_dirs(&out, &s.home);
}

/// The check is no stricter than it must be: a 50 KB item goes as argv and is saved.
#[test]
fn a_big_item_that_security_can_take_is_still_refreshed() {
    let login = Login::due();
    let doc = padded(&login, BIG_BUT_FINE);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).run();
    out.expect_code(0)
        .expect_silent()
        .check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
    expect_one_write_of_the_item(&out, &s, false);
}

/// The daemon sends nothing for an item too big, does not keep trying (a few `security` runs
/// at most while it waits), and refreshes once the item is made smaller.
#[test]
fn the_daemon_waits_for_a_smaller_item_and_sends_nothing_meanwhile() {
    let login = Login::due();
    let s = Setup::with(&padded(&login, TOO_BIG));
    let server = TokenServer::for_login(&login);
    let d = s.cmd(&server, &[]).timeout(Duration::from_secs(60)).spawn();
    // Its first attempt: the item read under the lock, then refused.
    assert!(
        wait_until(SOON, || s.kc.invocations() >= 2),
        "the daemon never read the item"
    );
    std::thread::sleep(Duration::from_secs(1));
    let settled = s.kc.invocations();
    std::thread::sleep(Duration::from_secs(4));
    let waiting = s.kc.invocations() - settled;
    let sent_while_big = server.count();
    // The user removes the MCP server's tokens (the fix the message names).
    let small = item_doc(&login);
    s.put(&small);
    let saved = wait_until(SOON, || s.saved_latest(&server));
    let out = stop(d);
    out.check_eq("requests while the item was too big", sent_while_big, 0)
        .check(
            waiting <= 2,
            format!("{waiting} `security` runs in 4 s of waiting: the daemon keeps retrying"),
        )
        .check(saved, "the smaller item was not refreshed")
        .check_eq("requests", server.count(), 1)
        .expect_stderr_contains("MCP");
    check_refreshed(&out, &s, &server, &small);
}

/// A Keychain write that keeps failing: the grant is kept until the budget ends (exit 1), and
/// the message speaks of the Keychain, not of disk space or permissions.
#[test]
fn a_failed_keychain_save_does_not_blame_disk_space() {
    let login = Login::due();
    let s = Setup::with(&item_doc(&login));
    s.kc.fail_writes(true);
    let server = TokenServer::for_login(&login);
    let out = s.once(&server).args(["--retry-budget", "2s"]).run();
    out.expect_code(1)
        .check_eq("requests", server.count(), 1)
        .expect_stderr_contains("could not be saved")
        .expect_stderr_contains("Keychain")
        .check(!out.stderr.contains("disk space"), "disk space is blamed");
}

/// `login` into an item too big for `security` is refused before the authorize URL is printed
/// (the code would be spent, then the save would fail): exit 78, nothing sent, item unchanged.
#[test]
fn login_refuses_an_item_too_big_for_security_before_the_browser() {
    let login = Login::due();
    let doc = padded(&login, TOO_BIG);
    let s = Setup::with(&doc);
    let before = s.raw();
    let server = TokenServer::start();
    let out =
        s.kc.apply(
            Cmd::new(&s.home)
                .server(&server)
                .env("CLAUDE_TOKEND_API_URL", server.base())
                .args(["login", "--no-browser", "--store", "keychain"]),
        )
        .run();
    out.expect_code(78)
        .expect_stderr_contains("MCP")
        .check(
            !out.stdout.contains("authorize"),
            "no authorize URL was printed",
        )
        .check_eq("requests", server.count(), 0)
        .check_eq("the item", s.raw(), before);
}
