//! A Keychain source mirrors to a file exactly as a file source does (how a Mac's login feeds a
//! Linux container): `--once --store keychain --mirror DIR` writes the item's access-only copy,
//! and the daemon follows the item when someone else rewrites it. On Linux, through the fake
//! `security` of the harness (`claude_tokend_e2e::keychain`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_tokend_e2e::keychain::*;
use claude_tokend_e2e::*;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(8);

/// A home whose fake keychain holds `doc` in Claude Code's default item.
fn keychain_home(doc: &Value) -> (TempHome, FakeKeychain) {
    let home = TempHome::new();
    let kc = FakeKeychain::new(&home);
    kc.put(SERVICE, TEST_USER, doc);
    (home, kc)
}

fn mirror_dir(home: &TempHome) -> PathBuf {
    home.path().join("mirror")
}

fn cmd(home: &TempHome, kc: &FakeKeychain, server: &TokenServer, dir: &Path) -> Cmd {
    kc.apply(Cmd::new(home).server(server))
        .args(["--store", "keychain", "--mirror"])
        .arg(dir)
}

fn item(kc: &FakeKeychain) -> Value {
    kc.get(SERVICE, TEST_USER).expect("the item")
}

#[test]
fn once_mirrors_a_keychain_login_to_a_file() {
    for login in [Login::fresh(), Login::due()] {
        let (home, kc) = keychain_home(&login.doc());
        let server = TokenServer::for_login(&login);
        let dir = mirror_dir(&home);
        let out = cmd(&home, &kc, &server, &dir).arg("--once").run();
        out.expect_code(0).expect_silent();
        let why = mirror_mismatch(&dir, &item(&kc), &json!({}));
        out.check(why.is_none(), format!("the mirror: {why:?}"))
            .check(
                !home.creds_path().exists(),
                "no credentials file made for a Keychain login",
            );
        if server.count() > 0 {
            out.check_eq(
                "the refreshed token mirrored",
                mirror_access(&dir),
                Some(server.last_issued().access),
            );
        }
    }
}

#[test]
fn the_daemon_follows_a_keychain_item_someone_else_rewrote() {
    let (home, kc) = keychain_home(&Login::fresh().doc());
    let server = TokenServer::start();
    let dir = mirror_dir(&home);
    let d = cmd(&home, &kc, &server, &dir)
        .timeout(Duration::from_secs(60))
        .spawn();
    let at_start = wait_until(SOON, || {
        mirror_mismatch(&dir, &item(&kc), &json!({})).is_none()
    });
    if !at_start {
        panic!(
            "written at start: {:?}\n{}",
            mirror_mismatch(&dir, &item(&kc), &json!({})),
            stop(d).context()
        );
    }
    // Claude Code signs in again on the Mac: a new login in the item.
    let newer = Login::fresh();
    kc.put(SERVICE, TEST_USER, &newer.doc());
    let followed = wait_until(SOON, || mirror_access(&dir) == Some(newer.access.clone()));
    let out = stop(d);
    out.check(followed, "the new login mirrored")
        .check(
            mirror_mismatch(&dir, &item(&kc), &json!({})).is_none(),
            format!(
                "the mirror: {:?}",
                mirror_mismatch(&dir, &item(&kc), &json!({}))
            ),
        )
        .check_eq("requests", server.count(), 0);
}
