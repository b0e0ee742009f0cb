//! "Permanent failures: ... sends no more requests with that refresh token" (CONTRACT.md "The
//! daemon"), against the store's hiccups: a refused login that comes back unchanged after the
//! file was malformed or missing for a while is still refused, and its token is not sent again.

use std::time::Duration;

use claude_tokend_e2e::*;

use crate::waste::*;

#[test]
fn a_refused_login_back_unchanged_after_a_malformed_spell_is_not_sent_again() {
    let home = TempHome::new();
    let dead = Login::expiring_in(5);
    let doc = dead.doc();
    home.write_creds(&doc);
    let server = TokenServer::start(); // knows no refresh token: invalid_grant
    let d = Cmd::new(&home)
        .server(&server)
        .args(["--refresh-before", "10s"])
        .timeout(Duration::from_secs(60))
        .spawn();
    await_requests(&server, 1);
    std::thread::sleep(Duration::from_millis(500));
    // An editor leaves the file broken for a while (longer than the half-written retries),
    // then it is back as it was.
    home.write_raw(b"{ \"claudeAiOauth\": ");
    std::thread::sleep(Duration::from_secs(3));
    replace_atomically(&home.creds_path(), &doc);
    std::thread::sleep(Duration::from_secs(3));
    // And once more through a logout-like gap: the file gone, then back unchanged.
    std::fs::remove_file(home.creds_path()).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    replace_atomically(&home.creds_path(), &doc);
    std::thread::sleep(Duration::from_secs(2));
    let out = stop(d);
    out.check_eq(
        "refresh tokens sent",
        sent_tokens(&server),
        vec![dead.refresh],
    );
}
