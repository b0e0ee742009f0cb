//! The daemon on a Keychain login: it refreshes when due and not again after its own write, it
//! notices an outside write of the item (Claude Code's login or refresh) by watching the keychain
//! file the attributes name, and it does not poll `security` while idle.

use std::time::{Duration, Instant};

use claude_tokend_e2e::*;

use super::*;

/// A short lead so a token can be due within seconds.
const LEAD: &str = "10s";

fn daemon(s: &Setup, server: &TokenServer) -> Cmd {
    s.cmd(server, &["--refresh-before", LEAD])
        .timeout(Duration::from_secs(120))
}

#[test]
fn the_daemon_refreshes_a_due_item_once_and_not_again_after_its_own_write() {
    let login = Login::expiring_in(10 + 2);
    let doc = item_doc(&login);
    let s = Setup::with(&doc);
    let server = TokenServer::for_login(&login);
    let d = daemon(&s, &server).spawn();
    assert!(
        wait_until(SOON, || s.saved_latest(&server)),
        "the due item was refreshed and saved"
    );
    // Its own write changes the keychain file: that must not look like news.
    std::thread::sleep(Duration::from_millis(2000));
    let out = stop(d);
    out.check_eq("requests", server.count(), 1)
        .check_eq(
            "the refresh token sent",
            server.requests()[0].refresh_token(),
            Some(login.refresh.as_str()),
        )
        .expect_no_secret(&login.secrets());
    check_refreshed(&out, &s, &server, &doc);
    expect_one_write_of_the_item(&out, &s, true);
    expect_no_file_and_no_lock_dirs(&out, &s.home);
}

#[test]
fn the_daemon_notices_an_outside_write_of_the_item_without_polling() {
    let s = Setup::with(&item_doc(&Login::fresh()));
    let server = TokenServer::start();
    let d = daemon(&s, &server).spawn();
    // Settled: it has read the item (and its attributes) and is idle.
    std::thread::sleep(Duration::from_millis(2000));
    let settled = s.kc.invocations();
    std::thread::sleep(Duration::from_millis(4000));
    let idle = s.kc.invocations() - settled;
    assert!(is_running(&d), "the daemon runs on a fresh item");
    assert_eq!(
        idle, 0,
        "the daemon ran security {idle} times in 4 idle seconds: it polls"
    );
    assert_eq!(server.count(), 0, "nothing is due");

    // Claude Code logs in again: a due login lands in the item (the keychain file changes).
    let newer = Login::expiring_in(-60);
    server.accept_refresh(&newer.refresh);
    let doc = item_doc(&newer);
    let written = Instant::now();
    s.put(&doc);
    assert!(
        wait_until(SOON, || s.saved_latest(&server)),
        "the outside write was noticed and the new login refreshed"
    );
    let noticed = written.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let out = stop(d);
    out.check_eq("requests", server.count(), 1)
        .check_eq(
            "refreshed with the refresh token from the outside write",
            server.requests()[0].refresh_token(),
            Some(newer.refresh.as_str()),
        )
        .check(
            noticed < Duration::from_secs(15),
            format!("took {noticed:?}: the once-a-minute check, not the watch"),
        );
    check_refreshed(&out, &s, &server, &doc);
}

#[test]
fn the_daemon_waits_for_a_missing_item_and_acts_when_it_appears() {
    let s = Setup::empty();
    let server = TokenServer::start();
    let d = daemon(&s, &server).spawn();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(is_running(&d), "a missing item does not stop the daemon");
    let login = Login::expiring_in(-60);
    server.accept_refresh(&login.refresh);
    let doc = item_doc(&login);
    s.put(&doc);
    assert!(
        wait_until(SOON, || s.saved_latest(&server)),
        "the new item was noticed and refreshed"
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = stop(d);
    out.check_eq("requests", server.count(), 1);
    check_refreshed(&out, &s, &server, &doc);
}
